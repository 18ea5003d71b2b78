"""Images and labels: every Pillow mode to RGB, EXIF orientation, 16-bit scaling, torchvision's
preprocessing numbers by hand, bad files, and the ImageNet / custom label lists."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicnn.io.images import (
    IMAGENET_MEAN, IMAGENET_STD, ImageReadError, center_crop, find_images, load_image, preprocess, resize_shorter,
    to_array,
)
from minicnn.io.labels import imagenet_classes, labels_for, load_labels

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def _rgb(path):
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def _over_white(rgb, alpha):
    """Straight-alpha compositing on white, the value every viewer shows (to within rounding)."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1 - a)


# -- modes -------------------------------------------------------------------------------------------
def test_rgb_png_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "x.png"), a)


def test_rgba_composited_on_white(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "x.png")
    out = _rgb(tmp_path / "x.png")
    assert np.abs(out - _over_white(rgb, alpha)).max() <= 1.0
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], rgb[0, 1])  # opaque -> unchanged


def test_transparent_colour_key(tmp_path):
    # RGB and grey PNGs may mark one colour transparent (tRNS) instead of carrying alpha
    a = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    Image.fromarray(a).save(tmp_path / "rgb.png", transparency=(10, 20, 30))
    np.testing.assert_array_equal(_rgb(tmp_path / "rgb.png"), [[[255, 255, 255], [40, 50, 60]]])
    Image.fromarray(np.array([[7, 9]], np.uint8)).save(tmp_path / "l.png", transparency=7)
    np.testing.assert_array_equal(_rgb(tmp_path / "l.png"), [[[255, 255, 255], [9, 9, 9]]])


def test_grey_and_grey_alpha(tmp_path):
    g = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "l.png"), np.repeat(g[..., None], 3, axis=2))
    alpha = np.full_like(g, 128)
    alpha[0] = 0
    Image.fromarray(np.dstack([g, alpha]), "LA").save(tmp_path / "la.png")
    out = _rgb(tmp_path / "la.png")
    expect = _over_white(np.repeat(g[..., None], 3, axis=2), alpha)
    assert np.abs(out - expect).max() <= 1.0
    np.testing.assert_array_equal(out[0], 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    img.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    img.save(tmp_path / "p.png", transparency=1)  # blue is transparent
    img.save(tmp_path / "p.gif", transparency=1)
    for name in ("p.png", "p.gif"):
        out = _rgb(tmp_path / name)
        np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
        np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    img.save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "opaque.png")[0, 1], [0, 0, 255])


def test_16bit_grey_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = _rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], np.rint(v / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(out[0, :, 1], [0, 1, 128, 255])
    # 32-bit integer grey ("I", how Pillow holds some 16-bit data): the same 16-bit scale
    Image.fromarray(v.astype(np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_array_equal(_rgb(tmp_path / "i32.tif")[..., 2], np.rint(v / 257.0).astype(np.uint8))
    Image.fromarray(v.astype(np.uint16)).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "g16.tif")[..., 0], np.rint(v / 257.0).astype(np.uint8))


def test_float_grey(tmp_path):
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])


def test_cmyk_and_one_bit(tmp_path):
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    cmyk.save(tmp_path / "c.jpg", quality=100)
    cmyk.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "c.tif")[0, 0], [255, 0, 0])
    assert np.abs(_rgb(tmp_path / "c.jpg")[0, 0].astype(int) - [255, 0, 0]).max() <= 3
    bits = Image.fromarray(np.array([[0, 255, 0], [255, 0, 255]], np.uint8)).convert("1")
    bits.save(tmp_path / "b.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "b.png")[..., 1], [[0, 255, 0], [255, 0, 255]])


@pytest.mark.parametrize("orientation,turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                              (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                              (2, lambda a: a[:, ::-1])])
def test_exif_orientation_applied(tmp_path, orientation, turn):
    a = np.random.default_rng(2).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif)
    out = _rgb(tmp_path / "o.png")
    np.testing.assert_array_equal(out, turn(a))


# -- bad files -----------------------------------------------------------------------------------------
def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    (tmp_path / "truncated.png").write_bytes(png.read_bytes()[:200])
    cases = {"empty.jpg": "empty", "junk.png": "not an image format", "truncated.jpg": "truncated",
             "truncated.png": "", "missing.jpg": "no such file"}
    for name, why in cases.items():
        with pytest.raises(ImageReadError, match=rf"{name}.*{why}"):
            load_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)
    assert isinstance(ImageReadError("x"), ValueError)


# -- preprocessing by hand -------------------------------------------------------------------------
def _normalise(pixels):
    """ToTensor + Normalize by hand, in float32 as torchvision does."""
    x = pixels.astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def test_torchvision_preprocess_without_resize_is_crop_and_normalise():
    # shorter side already 256: torchvision's Resize returns the image unchanged
    a = np.random.default_rng(4).integers(0, 256, (256, 301, 3), dtype=np.uint8)
    x = preprocess(Image.fromarray(a))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # left margin (301 - 224) / 2 = 38.5 rounds half to even -> 38; top = 16
    np.testing.assert_array_equal(x, _normalise(a[16:240, 38:262]))
    np.testing.assert_array_equal(preprocess(a), x)  # an array works the same


def test_resize_rule_and_crop_offsets():
    for (w, h), expect in {(500, 375): (341, 256), (375, 500): (256, 341), (300, 300): (256, 256),
                           (1000, 257): (996, 256), (257, 1000): (256, 996)}.items():
        assert resize_shorter(Image.new("RGB", (w, h)), 256).size == expect
    a = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    resized = img.resize((341, 256), Image.BILINEAR)
    expect = _normalise(np.asarray(resized)[16:240, 58:282])  # round(117 / 2) = 58 (half to even)
    np.testing.assert_array_equal(preprocess(img), expect)
    np.testing.assert_array_equal(np.asarray(center_crop(Image.fromarray(a[:, :225]), 224)), a[38:262, 0:224])


def test_normalisation_numbers():
    x = preprocess(Image.new("RGB", (300, 260), (124, 116, 104)))
    # by hand: (124/255 - 0.485)/0.229 etc.
    expect = [(124 / 255 - 0.485) / 0.229, (116 / 255 - 0.456) / 0.224, (104 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 100, 100], expect, atol=1e-6)
    assert np.ptp(x, axis=(1, 2)).max() == 0
    white = to_array(Image.new("RGB", (2, 2), (255, 255, 255)))
    np.testing.assert_allclose(white[:, 0, 0], (1 - MEAN) / STD, rtol=1e-6)
    raw = to_array(Image.new("RGB", (2, 2), (51, 0, 255)), mean=None)
    np.testing.assert_allclose(raw[:, 1, 1], [0.2, 0.0, 1.0], rtol=1e-7)


def test_center_crop_mode():
    a = np.random.default_rng(6).integers(0, 256, (224, 300, 3), dtype=np.uint8)
    # largest centred square of a 300x224 image: 224 wide from left = 38, no resize needed
    np.testing.assert_array_equal(preprocess(Image.fromarray(a), mode="center_crop"), _normalise(a[:, 38:262]))
    b = np.random.default_rng(7).integers(0, 256, (500, 400, 3), dtype=np.uint8)
    square = Image.fromarray(b[50:450]).resize((224, 224), Image.BILINEAR)
    np.testing.assert_array_equal(preprocess(b, mode="center_crop"), _normalise(np.asarray(square)))
    small = preprocess(np.zeros((10, 30), np.uint8), mode="center_crop")
    assert small.shape == (3, 224, 224)


def test_preprocess_input_checks(tmp_path):
    with pytest.raises(ValueError, match="unknown preprocess mode 'resize'"):
        preprocess(Image.new("RGB", (300, 300)), mode="resize")
    with pytest.raises(ValueError, match=r"uint8 of shape \(H, W\) or \(H, W, 3\), got float32 \(4, 4, 3\)"):
        preprocess(np.zeros((4, 4, 3), np.float32))
    Image.new("L", (300, 280), 200).save(tmp_path / "grey.png")
    x = preprocess(tmp_path / "grey.png")
    np.testing.assert_allclose(x[:, 0, 0], (200 / 255 - MEAN) / STD, rtol=1e-6)


def test_sample_photos_load():
    from pathlib import Path

    images = Path(__file__).resolve().parent.parent / "minicnn" / "data" / "images"
    paths = find_images([images])
    assert [p.name for p in paths] == ["astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    x = np.stack([preprocess(load_image(p)) for p in paths])
    assert x.shape == (5, 3, 224, 224) and np.isfinite(x).all()
    assert -2.2 < x.min() and x.max() < 2.7  # the range ImageNet normalisation allows


def test_find_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b.JPG", "sub/c.webp"]
    # a file named explicitly is kept whatever it is, to be reported when read
    assert find_images([tmp_path / "notes.txt", tmp_path / "gone.jpg"]) == [tmp_path / "notes.txt", tmp_path / "gone.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in directory"):
        find_images([tmp_path / "empty"])


# -- labels --------------------------------------------------------------------------------------------
def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000
    known = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby", 282: "tiger cat", 285: "Egyptian cat",
             504: "coffee mug", 817: "sports car", 967: "espresso", 999: "toilet tissue"}
    for i, name in known.items():
        assert names[i] == name
    # the two names ImageNet really repeats, and no others
    assert names[134] == names[517] == "crane" and names[638] == names[639] == "maillot"
    assert len(set(names)) == 998
    assert labels_for(1000) == names


def test_load_labels_utf8_any_language(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffchat tigré\r\n猫\r\nкошка \r\nقطة\n".encode("utf-8"))
    assert load_labels(f) == ["chat tigré", "猫", "кошка", "قطة"]
    assert labels_for(4, f) == ["chat tigré", "猫", "кошка", "قطة"]
    with pytest.raises(ValueError, match=r"has 4 names but the model has 5 classes"):
        labels_for(5, f)
    assert labels_for(3) == ["class 0", "class 1", "class 2"]


def test_load_labels_rejects_blank_lines_and_bad_files(tmp_path):
    f = tmp_path / "blank.txt"
    f.write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"blank\.txt.*line 3 is blank"):
        load_labels(f)
    f.write_text("cat\n   \n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is blank"):
        load_labels(f)
    f.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_labels(f)
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_labels(f)
    with pytest.raises(ValueError, match="cannot read labels file"):
        load_labels(tmp_path / "missing.txt")
