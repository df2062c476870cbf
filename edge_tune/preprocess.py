"""CLIP image preprocessing in pillow + numpy, identical to `transformers.CLIPImageProcessor`.

The pixel work is done by the same pillow calls the Hugging Face PIL backend makes (RGB conversion
with alpha composited onto white, bicubic resize of the shortest side on uint8, centre crop with
`(size - crop) // 2`), so the only differences left are float rounding in rescale/normalise. Unlike
the processor we also apply the EXIF orientation, as a photo viewer does (HF only does this when it
loads from a path itself), decode JPEGs above the pixel limit at a reduced DCT scale instead of
refusing them (a 108 MP phone photo), read HEIC/HEIF through the optional `pillow-heif` decoder
(`pip install 'edge-tune[heif]'`) and AVIF through Pillow's own, and refuse decompression bombs and
absurd aspect ratios with a clear error.
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

from edge_tune.errors import DataError
from edge_tune.manifest import RESAMPLE_RULES

#: Same limit pillow warns at; we refuse above it instead of decoding gigabytes.
MAX_IMAGE_PIXELS = 89_478_485
#: Longest side / shortest side above which the shortest-side resize would allocate absurd buffers.
MAX_ASPECT_RATIO = 64.0
#: Reduced scales libjpeg decodes at directly (its DCT scaling), tried in turn for JPEGs whose full
#: size is above MAX_IMAGE_PIXELS; pillow itself refuses files above twice the limit at open.
JPEG_DRAFT_SCALES = (2, 4, 8)
#: Phone formats whose decoder is the optional pillow-heif package (the `heif` extra).
HEIF_SUFFIXES = (".heic", ".heif")

_RESAMPLE = {name: getattr(Image.Resampling, name.upper()) for name in RESAMPLE_RULES}

ImageSource = str | Path | bytes | Image.Image


def open_image(
    source: ImageSource,
    *,
    name: str | Path | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an image fully, EXIF orientation applied; `DataError` naming the file on any failure.

    `source` may be a path, the file's bytes (so a caller that hashed the bytes decodes exactly
    those), or an already opened PIL image. `name` labels errors when decoding bytes. `draft_size`
    lets JPEGs decode at a reduced scale (still reading the whole stream, so truncation is caught):
    for checking a file, never for pixels.
    """
    label = str(
        name if name is not None else (source if isinstance(source, (str, Path)) else "image")
    )
    if isinstance(source, Image.Image):
        image = source
    else:
        _require_decoder(label)
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(stream)
        except Image.DecompressionBombError as err:
            raise _bomb_error(label, _pixels_in(err)) from err
        except FileNotFoundError as err:
            raise DataError("file not found", path=label, hint="Check the path") from err
        except PermissionError as err:
            raise DataError(
                "file is not readable (permission denied)",
                path=label,
                hint="Fix its permissions or remove it",
            ) from err
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(
                f"not a readable image ({_short(err, label)})",
                path=label,
                hint="Remove the file or replace it with a JPEG/PNG",
            ) from err
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise DataError(
            f"image is {width}x{height} pixels, an aspect ratio above {MAX_ASPECT_RATIO:g}:1",
            path=label,
            hint="Crop it to the subject before using it",
        )
    if not isinstance(source, Image.Image):  # not yet decoded: a JPEG may decode smaller
        if draft_size is not None:
            image.draft("RGB", draft_size)
        elif width * height > MAX_IMAGE_PIXELS:
            _draft_under_limit(image)
    if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
        raise _bomb_error(label, (width, height))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise _bomb_error(label, (width, height)) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(
            f"image is corrupt or truncated ({_short(err, label)})",
            path=label,
            hint="Re-export or remove the file",
        ) from err
    return image


#: Pillow's modes of 16- and 32-bit integer greyscale (a 16-bit PNG opens as one of them).
_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the CLIP processor makes it: transparency composited onto white, else `convert`.

    DEVIATION: 16-bit greyscale is scaled to 8 bits (v / 257, rounded) first; Pillow's `convert`
    clips it, so a 16-bit PNG of grey 30000/65535 became pure white."""
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resized_shape(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest side to `shortest_edge` (HF's integer rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def preprocess_image(
    source: ImageSource, preprocess: dict, *, name: str | Path | None = None
) -> np.ndarray:
    """One image → f32[3, crop, crop] pixel values for the image graph, per the manifest's rules."""
    image = open_image(source, name=name)
    label = str(
        name if name is not None else (source if isinstance(source, (str, Path)) else "image")
    )
    if preprocess.get("convert_rgb", True):
        image = to_rgb(image)
    shortest = int(preprocess["resize_shortest_edge"])
    crop = int(preprocess["crop_size"])
    width, height = image.size
    resample = _RESAMPLE.get(str(preprocess.get("resample", "bicubic")).lower())
    if resample is None:
        raise DataError(
            f"unknown resample rule {preprocess.get('resample')!r}",
            path=label,
            hint=f"Use one of {', '.join(_RESAMPLE)} in the bundle manifest",
        )
    image = image.resize(resized_shape(width, height, shortest), resample=resample)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    pixels = _centre_crop(pixels, crop)
    scaled = pixels.astype(np.float64) * float(preprocess.get("rescale_factor", 1 / 255))
    mean = np.asarray(preprocess["mean"], dtype=np.float64)
    std = np.asarray(preprocess["std"], dtype=np.float64)
    normalised = (scaled - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def preprocess_key(preprocess: dict) -> dict:
    """The manifest fields that change pixel values (the feature cache keys on them)."""
    keys = (
        "resize_shortest_edge",
        "crop_size",
        "resample",
        "rescale_factor",
        "mean",
        "std",
        "convert_rgb",
    )
    return {key: preprocess.get(key) for key in keys} | {
        "exif_transpose": True,
        "impl": 2,
    }  # 2: 16-bit grey scaled


def _centre_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """Centre crop with HF's offsets; zero-pad (as HF does) an image smaller than the crop."""
    height, width = pixels.shape[:2]
    if height < crop or width < crop:
        padded = np.zeros(
            (max(height, crop), max(width, crop), pixels.shape[2]), dtype=pixels.dtype
        )
        top, left = -(-(padded.shape[0] - height) // 2), -(-(padded.shape[1] - width) // 2)
        padded[top : top + height, left : left + width] = pixels
        pixels, (height, width) = padded, padded.shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    return pixels[top : top + crop, left : left + crop]


def _draft_under_limit(image: Image.Image) -> None:
    """Set a JPEG to decode at the largest of JPEG_DRAFT_SCALES that fits MAX_IMAGE_PIXELS (other
    formats have no reduced decode and are left as they are). The pixels then come from libjpeg's
    scaled IDCT instead of a full decode: the CLIP resize to ~224 px follows either way."""
    if image.format != "JPEG":
        return
    width, height = image.size
    for scale in JPEG_DRAFT_SCALES:
        if math.ceil(width / scale) * math.ceil(height / scale) <= MAX_IMAGE_PIXELS:
            # pillow picks the largest scale whose size is at least the one asked for (floor)
            image.draft("RGB", (width // scale, height // scale))  # grey and CMYK keep their mode
            return


@functools.cache
def _heif_opener() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow once; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _require_decoder(label: str) -> None:
    """A clear error for a photo format this installation cannot decode, before pillow's
    "cannot identify image file"; registers the HEIF decoder when it is installed."""
    suffix = Path(label).suffix.lower()
    if suffix in HEIF_SUFFIXES and not _heif_opener():
        raise DataError(
            "a HEIC/HEIF photo needs the optional decoder pillow-heif, which is not installed",
            path=label,
            hint="Install it (pip install 'edge-tune[heif]'), or convert the photo to JPEG",
        )
    if suffix == ".avif" and not features.check("avif"):
        raise DataError(
            "this Pillow was built without AVIF support",
            path=label,
            hint="Upgrade Pillow (pip install -U pillow), or convert the photo to JPEG",
        )


def _bomb_error(label: str, size: tuple[int, int] | int | None) -> DataError:
    if isinstance(size, tuple):
        what = f"is {size[0]}x{size[1]} pixels"
    else:
        what = f"has {size:,} pixels" if size else "has too many pixels"
    return DataError(
        f"image {what}, above the {MAX_IMAGE_PIXELS:,}-pixel safety limit "
        "(decompression-bomb guard)",
        path=label,
        hint="Downscale it (e.g. to 4000 px on the long side) before using it",
    )


def _pixels_in(err: BaseException) -> int | None:
    """Pillow's bomb error states the pixel count ("Image size (400000000 pixels) exceeds ...")."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return int(found.group(1)) if found else None


def _short(err: BaseException, label: str = "") -> str:
    """The first line of a pillow error, without the path it repeats."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if label:
        text = text.replace(f" {label!r}", "").replace(f" '{label}'", "")
    return text[:120]
