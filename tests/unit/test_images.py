"""The one image loader: every Pillow mode, 16-bit and float range, EXIF orientation, size cap, broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers_messy_images import FILE_MODES, bomb_png, broken_files, exif_rotated_jpeg, in_mode, save_in_mode
from vlmkd.data.decode import load_image, to_rgb_or_l
from vlmkd.data.images import open_image
from vlmkd.data.manifest import Manifest
from vlmkd.errors import DataError


def stripes(size: int = 32, lo: int = 40, hi: int = 210) -> np.ndarray:
    """Horizontal stripes, 4 rows each: orientation and contrast are both visible in the result."""
    g = np.full((size, size), lo, dtype=np.uint8)
    for r in range(0, size, 8):
        g[r : r + 4] = hi
    return g


def gray_of(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.float64)
    return a if a.ndim == 2 else a.mean(axis=2)


def file_manifest(root, names: list[str]) -> Manifest:
    return Manifest(ids=names, labels=[0] * len(names), class_names=["c"], root=str(root), paths=names)


@pytest.mark.parametrize("mode", sorted(FILE_MODES))
def test_every_file_mode_opens_as_the_same_picture(tmp_path, mode):
    g = stripes()
    path = save_in_mode(g, mode, tmp_path / "img")
    with Image.open(path) as im:
        assert im.mode == mode  # the file really holds that mode
    got = gray_of(open_image(file_manifest(tmp_path, [path.name]), 0))
    assert got.shape == g.shape
    if mode == "1":  # dithered to black and white: the stripes survive as dot density
        assert got[g == 210].mean() - got[g == 40].mean() > 100
    else:
        np.testing.assert_allclose(got, g, atol=3)


def test_16bit_png_keeps_its_dynamic_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as im:
        assert im.mode == "I;16"
    got = np.asarray(open_image(file_manifest(tmp_path, ["ramp.png"]), 0), dtype=np.float64)
    assert (got >= 255).mean() < 0.01  # Pillow's own conversion saturates almost every pixel
    np.testing.assert_allclose(got.ravel(), ramp.ravel() / 257.0, atol=1)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5], [1.0, 0.25]]), [[0, 128, 255, 64]]),  # 0..1 floats
        (np.array([[0.0, 100.0], [255.0, 50.0]]), [[0, 100, 255, 50]]),  # 0..255 floats
        (np.array([[-1.0, 0.0], [3.0, 1.0]]), [[0, 64, 255, 128]]),  # anything else: its own min..max
    ],
)
def test_float_images_use_their_range(values, expected):
    got = np.asarray(to_rgb_or_l(Image.fromarray(values.astype(np.float32))))
    assert got.ravel().tolist() == expected[0]


def test_hsv_and_alpha_in_memory():
    hsv = to_rgb_or_l(Image.new("HSV", (2, 2), (0, 255, 255)))  # no file format stores HSV
    assert hsv.mode == "RGB" and hsv.getpixel((0, 0)) == (255, 0, 0)
    clear = to_rgb_or_l(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))  # transparent over white, not black
    assert clear.getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb_or_l(in_mode(stripes(), "LA")).mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    g = stripes(32)[:, :24]  # 24 wide x 32 tall, horizontal stripes
    path = exif_rotated_jpeg(g, tmp_path / "phone.jpg")
    with Image.open(path) as im:
        assert im.size == (32, 24)  # stored sideways
    got = gray_of(load_image(path))
    assert got.shape == g.shape
    assert np.abs(got - g).mean() < 4  # upright again: rows are the stripes


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_image", "bomb"])
def test_broken_files_are_one_line_errors_naming_the_file(tmp_path, kind):
    path = broken_files(tmp_path / "bad")[kind]
    with pytest.raises(DataError) as e:
        open_image(file_manifest(tmp_path / "bad", [path.name]), 0)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    expected = {
        "empty": "empty (0 bytes)",
        "truncated": "truncated",
        "not_image": "not an image",
        "bomb": "bomb",
    }
    assert expected[kind] in msg


def test_size_cap_is_checked_from_the_header(tmp_path):
    path = bomb_png(tmp_path / "big.png", 3000, 3000)  # 9 MP declared, about 1 KB on disk
    with pytest.raises(
        DataError, match=r"3000 x 3000 = 9,000,000 pixels, above data.max_image_pixels=1,000,000"
    ):
        load_image(path, max_pixels=1_000_000)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    assert load_image(tmp_path / "big.jpg", shorter_side=100).size == (200, 150)  # decoded at 1/8 scale
    Image.fromarray(arr).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", shorter_side=100).size == (133, 100)  # no draft: resized
    assert load_image(tmp_path / "big.jpg", max_side=200).size == (200, 150)
    assert load_image(tmp_path / "big.jpg", max_side=4000).size == (1600, 1200)  # never upscaled
