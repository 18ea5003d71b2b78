"""Regression tests for findings of an acceptance pass over the public API and CLI.

Each test pins one behaviour a user relies on and that an earlier version got wrong.
"""
import numpy as np
import pytest
from PIL import Image

from minicnn.io.images import IMAGENET_MEAN, IMAGENET_STD, center_crop, preprocess, resize_shorter


_PIXEL_LIMIT = 256 * 256 * 16


def _resize_sizes(monkeypatch):
    """Record the output size of every Pillow resize; fail at once on one beyond ``_PIXEL_LIMIT``."""
    sizes = []
    orig = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        # fail before allocating, so a regression reports instead of exhausting memory
        assert size[0] * size[1] <= _PIXEL_LIMIT, f"resize to {tuple(size)} builds a huge intermediate"
        return orig(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return sizes


def test_preprocess_of_extreme_aspect_ratio_never_builds_the_huge_intermediate(monkeypatch):
    # a 1 x 200000 px strip is a few hundred bytes as PNG; torchvision's Resize(256) would make it
    # 256 x 51.2M px (~39 GB of RGB) just to crop the centre
    sizes = _resize_sizes(monkeypatch)
    a = np.zeros((200_000, 1, 3), np.uint8)
    a[:, 0] = (200, 40, 90)
    x = preprocess(Image.fromarray(a))
    assert x.shape == (3, 224, 224)
    assert sizes and max(w * h for w, h in sizes) <= _PIXEL_LIMIT
    expect = (np.array([200, 40, 90], np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )
    np.testing.assert_allclose(x, np.broadcast_to(expect[:, None, None], x.shape), atol=1e-6)


@pytest.mark.parametrize("w, h", [(3, 170), (2, 100), (900, 7), (1, 40)])
def test_preprocess_beyond_the_aspect_limit_stays_within_one_grey_level_of_the_full_resize(w, h):
    rng = np.random.default_rng(w * 1000 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    full = np.asarray(center_crop(resize_shorter(img, 256), 224)).astype(np.float32)
    x = preprocess(img)
    pixels = (x.transpose(1, 2, 0) * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)) * 255
    assert np.abs(pixels - full).max() <= 1.0 + 1e-3


def test_preprocess_within_the_aspect_limit_is_exactly_torchvisions_composition():
    rng = np.random.default_rng(0)
    for w, h in [(320, 213), (16, 256), (257, 3000), (1, 16)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        full = np.asarray(center_crop(resize_shorter(img, 256), 224)).astype(np.float32) / np.float32(255)
        expect = (full - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        np.testing.assert_array_equal(preprocess(img), expect.transpose(2, 0, 1))


def test_train_out_directory_gets_the_default_file_name(tmp_path, capsys):
    from minicnn import cli

    target = tmp_path / "runs"
    target.mkdir()
    rc = cli.main(["train", "digits", "--epochs", "1", "--val-size", "0", "--out", str(target), "--no-progress"])
    assert rc == 0
    saved = target / "digits_convnet.safetensors"
    assert saved.is_file()
    assert f"saved weights to {saved}" in capsys.readouterr().out
    import minicnn as mc

    assert mc.load(saved)["0.weight"].shape == (16, 1, 3, 3)


def test_train_unusable_out_fails_before_training(tmp_path, capsys):
    from minicnn import cli

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    rc = cli.main(["train", "digits", "--epochs", "1", "--out", str(blocker / "w.safetensors"), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "cannot create directory" in cap.err and "file.txt" in cap.err
    assert "epoch" not in cap.out  # refused up front, not after the run


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY", b"\x80\x04random bytes, not a reference"])
def test_verify_reference_that_is_not_an_npz_is_one_clear_error(tmp_path, capsys, content):
    from minicnn import cli

    bad = tmp_path / "ref.npz"
    if content == b"\x93NUMPY":
        np.save(tmp_path / "arr.npy", np.zeros(3))  # a valid .npy, but not an .npz archive
        bad = tmp_path / "arr.npy"
    else:
        bad.write_bytes(content)
    rc = cli.main(["verify", "unused.safetensors", "--reference", str(bad), "--no-train"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "cannot read reference file" in err and bad.name in err
    assert "allow_pickle" not in err  # never advise unpickling an untrusted file


def test_embed_out_naming_a_directory_is_refused_up_front(tmp_path, capsys):
    from minicnn import cli

    (tmp_path / "emb.npz").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    rc = cli.main(["embed", str(tmp_path / "a.png"), "--out", str(tmp_path / "emb.npz"),
                   "--weights", str(tmp_path / "not_there.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and "is a directory" in err


def test_embed_failed_write_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import minicnn as mc
    from minicnn import cli
    from minicnn.models.resnet import seeded_state_dict

    weights = tmp_path / "seed.safetensors"
    mc.save(seeded_state_dict("resnet18", 0), weights)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.png")

    def failing_savez(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    out = tmp_path / "out" / "emb.npz"
    rc = cli.main(["embed", str(tmp_path / "a.png"), "--out", str(out), "--weights", str(weights)])
    assert rc == 1 and "No space left" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_layers_accept_pytorchs_keyword_arguments_at_their_defaults():
    # code written for torch.nn passes these explicitly; the default value must work, anything
    # else must say it is unsupported rather than fail with an unexpected-keyword TypeError
    from minicnn import nn

    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="zeros")
    assert conv(x).shape == (2, 4, 9, 9)
    mp = nn.MaxPool2d(3, 2, 1, 1, False, False)  # torch's positional order: ..., dilation, return_indices, ceil_mode
    assert mp(x).shape == (2, 3, 5, 5)
    assert nn.MaxPool2d(kernel_size=3, stride=2, padding=1, return_indices=False, ceil_mode=False)(x).shape == (2, 3, 5, 5)
    ap = nn.AvgPool2d(3, 2, 1, False, True, None)  # ..., ceil_mode, count_include_pad, divisor_override
    assert ap(x).shape == (2, 3, 5, 5)
    assert nn.AdaptiveMaxPool2d(2, return_indices=False)(x).shape == (2, 3, 2, 2)
    # the other values work too (tests/test_padding_pooling.py checks them against PyTorch)
    assert nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")(x).shape == (2, 4, 9, 9)
    assert nn.MaxPool2d(2, return_indices=True, ceil_mode=True)(x)[1].shape == (2, 3, 5, 5)
    assert nn.AdaptiveMaxPool2d(2, return_indices=True)(x)[1].shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="divisor_override"):
        nn.AvgPool2d(2, divisor_override=3)


def test_fit_history_reads_like_keras_and_has_the_issue_keys():
    import minicnn as mc
    from minicnn import nn, optim

    mc.manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    h = mc.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (X, y), (X, y), 3, ["accuracy"],
               progress=False)
    assert h.history is h and len(h.history["loss"]) == 3
    for key in ("loss", "accuracy", "error_rate", "val_loss", "val_accuracy", "val_error_rate"):
        assert len(h[key]) == 3, key
    np.testing.assert_allclose(np.add(h["accuracy"], h["error_rate"]), 1.0)
    assert h["loss"][-1] < h["loss"][0]


def test_backend_option_is_accepted_after_the_command_too(capsys):
    import minicnn as mc
    from minicnn import cli

    before = mc.get_backend()
    try:
        assert cli.main(["summary", "digits_convnet", "--backend", "numpy"]) == 0
        assert mc.get_backend() == "numpy"
        mc.set_backend(before)
        # given in both places, the one after the command wins; given before only, it is kept
        args = cli.build_parser().parse_args(["--backend", "numba", "summary", "digits_convnet", "--backend", "numpy"])
        assert args.backend == "numpy"
        args = cli.build_parser().parse_args(["--backend", "numpy", "summary", "digits_convnet"])
        assert args.backend == "numpy"
        assert cli.build_parser().parse_args(["summary", "digits_convnet"]).backend is None
    finally:
        mc.set_backend(before)
    assert "Total params: 13,706" in capsys.readouterr().out
