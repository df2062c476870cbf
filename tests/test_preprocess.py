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


def test_a_108_megapixel_jpeg_decodes_at_half_scale_instead_of_being_refused(tmp_path):
    path = tmp_path / "phone.jpg"
    photo = Image.open(SKIMAGE_DIR / "chelsea.png").convert("RGB")  # 451x300
    photo.resize((451 * 27, 300 * 27), Image.Resampling.BILINEAR).save(path, quality=90)
    assert 12177 * 8100 > MAX_IMAGE_PIXELS  # 98.6 M pixels, a 108 MP phone's class
    assert open_image(path).size == (6089, 4050)  # libjpeg's 1/2 scale
    pixels = preprocess_image(path, CLIP_PREPROCESS)
    reference = preprocess_image(photo, CLIP_PREPROCESS)  # the same photo, never enlarged
    assert pixels.shape == reference.shape == (3, 224, 224)
    assert np.abs(pixels - reference).mean() < 0.05  # the same picture, resampled twice
    png = tmp_path / "phone.png"  # a PNG has no reduced decode: still refused
    Image.new("1", (12000, 9000)).save(png)
    with pytest.raises(DataError, match="12000x9000 pixels, above the"):
        open_image(png)


def test_heic_and_avif_photos_read_like_the_photo(tmp_path):
    pytest.importorskip("pillow_heif")
    from edge_tune.data import file_problem, load_shots
    from edge_tune.preprocess import _heif_opener

    photo = Image.open(SKIMAGE_DIR / "chelsea.png").convert("RGB")
    reference = preprocess_image(photo, CLIP_PREPROCESS)
    assert _heif_opener()  # registered, so Pillow can also write HEIC here
    for suffix in (".heic", ".avif"):
        path = tmp_path / "cat" / f"chelsea{suffix}"
        path.parent.mkdir(exist_ok=True)
        photo.save(path, quality=95)
        assert file_problem(path) is None  # what predict accepts
        assert np.abs(preprocess_image(path, CLIP_PREPROCESS) - reference).mean() < 0.05
    (tmp_path / "dog").mkdir()
    photo.rotate(90, expand=True).save(tmp_path / "dog" / "rotated.heif", quality=95)
    shots = load_shots(tmp_path)  # what fit and eval read
    assert [s.path.name for s in shots.samples] == ["chelsea.avif", "chelsea.heic", "rotated.heif"]
    assert shots.report() is None


def test_heic_without_its_decoder_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    from edge_tune.preprocess import _heif_opener

    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if the extra were not installed
    _heif_opener.cache_clear()
    try:
        with pytest.raises(DataError) as err:
            open_image(path)
    finally:
        _heif_opener.cache_clear()
    assert str(err.value) == (
        f"{path}: a HEIC/HEIF photo needs the optional decoder pillow-heif, which is not "
        "installed. Install it (pip install 'edge-tune[heif]'), or convert the photo to JPEG"
    )


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    photo = np.asarray(Image.open(SKIMAGE_DIR / "camera.png").convert("L"), dtype=np.uint16)
    wide = tmp_path / "camera16.png"
    Image.fromarray(photo * 257).save(wide)  # the same picture in 16 bits (0..65535)
    assert Image.open(wide).mode.startswith("I")
    np.testing.assert_array_equal(
        preprocess_image(wide, CLIP_PREPROCESS),
        preprocess_image(Image.fromarray(photo.astype(np.uint8)), CLIP_PREPROCESS),
    )
