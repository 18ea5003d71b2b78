"""``minicnn train digits`` and ``minicnn summary``, in process and as ``python -m minicnn``."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import cli
from minicnn.data import load_digits
from minicnn.models import digits_convnet
from minicnn.train import evaluate, predict

REPO = Path(__file__).resolve().parents[1]


def _run_module(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "minicnn", *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=120)


def test_train_digits_reports_and_saves(tmp_path, capsys):
    out_file = tmp_path / "sub" / "w.safetensors"
    rc = cli.main(["train", "digits", "--epochs", "3", "--out", str(out_file), "--no-progress", "--seed", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line and " acc " in line and "val_acc" in line for line in epoch_lines)
    m = re.search(r"test accuracy: (\d\.\d{4}) \((\d+)/359\)", out)
    assert m, out
    # the confusion matrix: a header and one row per digit whose counts sum to the test set
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("true \\ pred"))
    rows = [lines[head + 2 + d].split() for d in range(10)]
    assert [r[0] for r in rows] == [str(d) for d in range(10)]
    cm = np.array([[int(v) for v in r[1:11]] for r in rows])
    assert cm.sum() == 359 and np.trace(cm) == int(m.group(2))
    assert out_file.is_file()
    # the saved weights reproduce the printed accuracy and confusion matrix
    model = digits_convnet()
    model.load_state_dict(mc.load(out_file))
    X_te, y_te = load_digits("test")
    acc = evaluate(model, None, (X_te, y_te))["accuracy"]
    assert f"{acc:.4f}" == m.group(1)
    pred = predict(model, X_te).argmax(1)
    hand = np.zeros((10, 10), dtype=int)
    for t, p in zip(y_te, pred):
        hand[t, p] += 1
    np.testing.assert_array_equal(cm, hand)
    assert acc > 0.8  # three epochs already learn most digits


def test_train_default_out_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["train", "digits", "--epochs", "1", "--no-progress", "--val-size", "0", "--optimizer", "adam"])
    assert rc == 0
    assert (tmp_path / "weights" / "digits_convnet.safetensors").is_file()
    out = capsys.readouterr().out
    assert "adam lr 0.01" in out and " / 0 val / " in out and "saved weights to weights/digits_convnet.safetensors" in out


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--val-size", "1.5"], r"--val-size must lie in \[0, 1\)"),
])
def test_train_bad_arguments_one_line_error(args, message, capsys, tmp_path):
    rc = cli.main(["train", "digits", "--out", str(tmp_path / "w.safetensors"), *args])
    err = capsys.readouterr().err
    assert rc == 1
    assert re.search(message, err) and err.startswith("minicnn train: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.safetensors").exists()


def test_summary_digits_convnet(capsys):
    assert cli.main(["summary", "digits_convnet"]) == 0
    out = capsys.readouterr().out
    expected_rows = [
        ("0 (Conv2d)", "(None, 16, 8, 8)", "160"),
        ("2 (MaxPool2d)", "(None, 16, 4, 4)", "0"),
        ("3 (Conv2d)", "(None, 32, 4, 4)", "4,640"),
        ("5 (MaxPool2d)", "(None, 32, 2, 2)", "0"),
        ("6 (Flatten)", "(None, 128)", "0"),
        ("7 (Linear)", "(None, 64)", "8,256"),
        ("10 (Linear)", "(None, 10)", "650"),
    ]
    for name, shape, params in expected_rows:
        assert re.search(re.escape(name) + r"\s+" + re.escape(shape) + r"\s+" + re.escape(params) + r"$", out, re.M), name
    assert "Total params: 13,706" in out and "Trainable params: 13,706" in out and "Non-trainable params: 0" in out


def test_summary_input_shape_option_and_errors(capsys):
    assert cli.main(["summary", "digits_convnet", "--input-shape", "1", "12", "12"]) == 1
    err = capsys.readouterr().err
    # 12x12 -> 3x3 after two pools: 288 features for a 128-input Linear; the error names both
    assert "minicnn summary: error:" in err and "128" in err and "(1, 288)" in err
    assert cli.main(["summary", "no_such_model"]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_help_in_a_subprocess():
    top = _run_module("--help")
    assert top.returncode == 0, top.stderr
    assert "train" in top.stdout and "summary" in top.stdout
    commands = sorted(set(re.findall(r"^    (\w+)\s", top.stdout, re.M)))
    assert {"train", "summary"} <= set(commands)
    for cmd in commands:
        r = _run_module(cmd, "--help")
        assert r.returncode == 0, f"minicnn {cmd} --help failed: {r.stderr}"
        assert r.stdout.startswith(f"usage: minicnn {cmd}"), r.stdout
    train = _run_module("train", "--help").stdout
    for flag in ("--epochs", "--batch-size", "--lr", "--optimizer", "--seed", "--out", "--no-progress"):
        assert flag in train
    assert "--input-shape" in _run_module("summary", "--help").stdout
