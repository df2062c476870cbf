"""Preprocessing parity with transformers' CLIP image processor on real photos.

Tolerance: we make the same pillow calls as the HF PIL backend (RGB conversion, bicubic resize on
uint8, centre crop), so every pixel reaching rescale/normalise is the same uint8. What is left is
float rounding: HF rescales and normalises in float32 steps, we do it in float64 and round once.
Values lie in about [-1.8, 2.2], where one float32 ulp is 2.4e-7; two roundings differ by at most a
few ulp, hence atol 1e-6. A one-pixel shift or a different kernel moves values by >1e-2.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tune.errors import DataError
from edge_tune.preprocess import MAX_IMAGE_PIXELS, open_image, preprocess_image

skimage_data = pytest.importorskip("skimage.data")
transformers = pytest.importorskip("transformers")

SKIMAGE_DIR = Path(skimage_data.__file__).parent
PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "logo.png",
    "page.png",
]

CLIP_PREPROCESS = {
    "resize_shortest_edge": 224,
    "crop_size": 224,
    "resample": "bicubic",
    "rescale_factor": 1 / 255,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "convert_rgb": True,
}


def hf_processor(shortest: int = 224, crop: int = 224):
    """The CLIP processor's PIL backend (what `CLIPImageProcessor` is without torchvision)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop}
    )


def hf_pixels(image: Image.Image, processor) -> np.ndarray:
    return np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0])


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_clip_image_processor_on_real_photos(name):
    path = SKIMAGE_DIR / name
    ours = preprocess_image(path, CLIP_PREPROCESS)
    theirs = hf_pixels(Image.open(path), hf_processor())
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_converted_modes_match(mode):
    """Greyscale, palette, transparent and CMYK photos are converted as the processor does."""
    photo = Image.open(SKIMAGE_DIR / "chelsea.png").convert("RGBA")
    alpha = np.linspace(0, 255, photo.width, dtype=np.uint8)[None, :].repeat(photo.height, 0)
    photo.putalpha(Image.fromarray(alpha))
    image = photo if mode in ("RGBA",) else photo.convert(mode)
    processor = hf_processor(64, 48)
    settings = CLIP_PREPROCESS | {"resize_shortest_edge": 64, "crop_size": 48}
    np.testing.assert_allclose(
        preprocess_image(image, settings), hf_pixels(image, processor), atol=1e-6
    )


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.open(SKIMAGE_DIR / "chelsea.png").convert("RGB")  # 451 x 300, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif, quality=95)
    upright = open_image(path)
    assert upright.size == (300, 451)
    expected = hf_pixels(Image.open(path).transpose(Image.Transpose.ROTATE_270), hf_processor())
    np.testing.assert_allclose(preprocess_image(path, CLIP_PREPROCESS), expected, atol=1e-6)


def test_tiny_image_is_upscaled_like_the_processor():
    image = Image.new("RGB", (1, 1), (200, 10, 30))
    np.testing.assert_allclose(
        preprocess_image(image, CLIP_PREPROCESS), hf_pixels(image, hf_processor()), atol=1e-6
    )


def test_bytes_and_path_give_the_same_pixels():
    path = SKIMAGE_DIR / "rocket.jpg"
    np.testing.assert_array_equal(
        preprocess_image(path.read_bytes(), CLIP_PREPROCESS, name=path),
        preprocess_image(path, CLIP_PREPROCESS),
    )


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 M pixels, a few kB on disk
    with pytest.raises(DataError) as err:
        preprocess_image(path, CLIP_PREPROCESS)
    assert str(err.value) == (
        f"{path}: image has 400,000,000 pixels, above the {MAX_IMAGE_PIXELS:,}-pixel "
        "safety limit (decompression-bomb guard). Downscale it (e.g. to 4000 px on "
        "the long side) before using it"
    )


def test_truncated_and_non_image_files_raise_one_line_errors(tmp_path):
    data = (SKIMAGE_DIR / "rocket.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError, match=r"truncated\.jpg: image is corrupt or truncated \(.*\)\. Re-export"
    ):
        preprocess_image(truncated, CLIP_PREPROCESS)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(
        DataError, match=r"notes\.jpg: not a readable image \(.*\)\. Remove the file"
    ):
        preprocess_image(text, CLIP_PREPROCESS)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(DataError, match="aspect ratio above 64:1"):
        preprocess_image(Image.new("RGB", (6500, 100)), CLIP_PREPROCESS, name="strip.png")


def test_in_memory_png_roundtrip_is_lossless():
    """Sanity for the fixtures above: a PNG saved and reopened preprocesses identically."""
    image = Image.open(SKIMAGE_DIR / "coffee.png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    np.testing.assert_array_equal(
        preprocess_image(buffer.getvalue(), CLIP_PREPROCESS),
        preprocess_image(image, CLIP_PREPROCESS),
    )
