"""Image files are read safely and every PIL mode becomes sensible 8-bit RGB."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from llamagen.images import load_image, pil_to_tensor, tensor_to_pil, to_rgb


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_rgb_is_kept():
    image = Image.new("RGB", (5, 3), (10, 20, 30))
    assert to_rgb(image) is image


def test_greyscale_and_palette_become_rgb():
    grey = to_rgb(Image.new("L", (4, 2), 77))
    assert grey.mode == "RGB" and (pixels(grey) == 77).all()
    palette = Image.new("P", (4, 2))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    rgb = pixels(to_rgb(palette))
    assert tuple(rgb[0, 0]) == (200, 100, 50) and tuple(rgb[1, 1]) == (0, 0, 0)
    assert (pixels(to_rgb(Image.new("1", (3, 3), 1))) == 255).all()


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))
    rgb = pixels(to_rgb(rgba))
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 1]) == (255, 255, 255)
    half = pixels(to_rgb(Image.new("LA", (1, 1), (0, 128))))
    assert abs(int(half[0, 0, 0]) - 127) <= 1
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    rgb = pixels(to_rgb(palette))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (0, 255, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    assert pixels(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == "I"
    assert pixels(to_rgb(as_int32))[0, :, 0].tolist() == [0, 128, 255]
    eight_bit_in_int32 = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert pixels(to_rgb(eight_bit_in_int32))[0, :, 0].tolist() == [0, 100, 255]


def test_float_images_in_the_unit_range_are_scaled():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert pixels(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # full magenta and yellow: red
    assert tuple(pixels(to_rgb(cmyk))[0, 0]) == (255, 0, 0)


def save_to(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK", "RGB"])
def test_files_of_every_mode_load_as_rgb(tmp_path, mode):
    source = Image.new("RGB", (9, 7), (40, 90, 200))
    image = source.convert(mode) if mode != "I;16" else Image.fromarray(np.full((7, 9), 30000, np.uint16))
    name = "image.jpg" if mode == "CMYK" else "image.tiff" if mode in ("I;16",) else "image.png"
    loaded = load_image(save_to(tmp_path, image, name))
    assert loaded.mode == "RGB" and loaded.size == (9, 7)
    # The pixels PIL itself gives that image as RGB; 16 bits scaled to 8 (30000 / 257); JPEG's CMYK within its loss.
    if mode == "I;16":
        expected, tolerance = np.full((7, 9, 3), round(30000 / 257)), 0
    else:
        expected, tolerance = pixels(image.convert("RGB")).astype(int), 3 if mode == "CMYK" else 0
    assert np.abs(pixels(loaded).astype(int) - expected).max() <= tolerance


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed upright as 4 wide, 8 high
    path = save_to(tmp_path, image, "phone.jpg", exif=exif)
    assert load_image(path).size == (4, 8)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are notes, not pixels")
    with pytest.raises(ValueError, match="not an image that PIL can read"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(path)


def test_over_the_size_limit_is_refused_before_decoding(tmp_path):
    path = save_to(tmp_path, Image.new("RGB", (1200, 1000)), "big.png")
    with pytest.raises(
        ValueError, match=r"1200x1000 = 1,200,000 pixels; the limit is 1,000,000 pixels \(1 megapixel\)"
    ):
        load_image(path, max_megapixels=1.0)
    assert load_image(path, max_megapixels=2.0).size == (1200, 1000)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "nowhere.png")


def test_tensor_conversions_round_trip_exactly():
    array = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tensor = pil_to_tensor(Image.fromarray(array))
    assert tensor.shape == (1, 3, 5, 6)
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert (pixels(tensor_to_pil(tensor)[0]) == array).all()
    assert pixels(tensor_to_pil(torch.full((1, 3, 1, 1), 5.0))[0]).tolist() == [[[255, 255, 255]]]


def test_an_image_with_no_pixels_is_refused():
    from llamagen.images import check_image_size

    with pytest.raises(ValueError, match=r"empty \(0x7 pixels\)"):
        check_image_size(0, 7, 4.0, "image")
