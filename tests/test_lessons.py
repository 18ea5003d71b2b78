"""The lessons and the guided tour in docs/.

Every lesson runs as a script in quick mode and must write its PNG figures, none of them blank.
The docs are checked as far as a machine can: each link to a reference kernel points at exactly the
lines of the function it names, every relative link resolves, the index reaches every page and
lesson, each page's gradient-check command selects real tests, and the code that conv.md shows
for the backward pass computes what ``conv2d_backward`` computes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

# lesson -> PNG files it must write in quick mode (extra arguments where a lesson needs them)
LESSONS = {
    "01_classic_kernels.py": ["01_kernels.png", "01_conv3x3.png", "01_conv4x4.png"],
    "02_resnet_filters.py": ["02_conv1_filters.png", "02_conv1_maps.png", "02_layer1_maps.png", "02_top_maps.png"],
    "03_layer4_maps.py": ["03_layer4_tiles.png", "03_layer4_tiles_each.png", "03_layer4_top.png"],
    "04_embeddings.py": ["04_embeddings.png", "04_logits.png", "04_correlations.png"],
    "05_grad_cam.py": ["05_grad_cam.png", "05_saliency.png", "05_grad_cam_layers.png"],
    "06_dream.py": ["06_filters.png", "06_deep_dream.png"],
    "07_digits_regularisation.py": ["07_augmentations.png", "07_learning_curves.png", "07_confusion.png"],
    "08_transfer_learning.py": ["08_transfer_curves.png", "08_lr_schedule.png", "08_confusion.png",
                                "08_resnet_fine_tune.png"],
    "09_heads.py": ["09_multilabel.png", "09_multilabel_examples.png", "09_regression.png",
                    "09_regression_examples.png"],
}


def test_every_lesson_file_is_listed():
    found = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert found == sorted(LESSONS)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Seeded ResNet-18 weights in a safetensors file, to drive the ``--weights PATH`` code path."""
    from minicnn.io.safetensors import save_file
    from minicnn.models.resnet import seeded_state_dict

    path = tmp_path_factory.mktemp("weights") / "resnet18-seeded.safetensors"
    save_file(seeded_state_dict("resnet18", 0), path)
    return path


def _png_std(path):
    from PIL import Image

    with Image.open(path) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).std())


@pytest.mark.slow
@pytest.mark.parametrize("lesson", sorted(LESSONS))
def test_lesson_runs_and_draws(lesson, tmp_path, weights_file):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    cmd = [sys.executable, str(EXAMPLES / lesson), "--out", str(out), "--quick"]
    if lesson.startswith("08_"):
        cmd += ["--weights", str(weights_file)]  # the ResNet-18 fine-tuning path, on seeded weights
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINICNN_BACKEND="numpy")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{lesson} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    written = sorted(p.name for p in out.glob("*.png"))
    missing = set(LESSONS[lesson]) - set(written)
    assert not missing, f"{lesson} did not write {sorted(missing)} (wrote {written})"
    for name in written:
        std = _png_std(out / name)
        assert std > 8.0, f"{lesson}: {name} looks blank (pixel std {std:.1f})"
    assert "wrote" in proc.stdout


def test_lesson_rejects_a_bad_weights_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a weight file")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINICNN_BACKEND="numpy")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "02_resnet_filters.py"), "--out", str(tmp_path / "o"),
                           "--quick", "--weights", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "bad.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- the docs ---------------------------------------------------------------------------------------

PAGES = ["index.md", "architecture.md", "conv.md", "pooling.md", "batchnorm.md", "relu.md", "dense.md",
         "softmax_cross_entropy.md", "adding_an_op.md", "resnet_layout.md", "losses.md"]
CODE_LINK = re.compile(r"\[`([A-Za-z_][\w.]*)(?:\(\))?`\]\((\.\./[^)#\s]+)#L(\d+)-L(\d+)\)")
ANY_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _definition_span(path: Path, dotted: str):
    """1-based (first, last) line of ``def``/``class`` ``dotted`` (``Class.method`` allowed)."""
    lines = path.read_text().splitlines()
    start, indent = 0, -1
    for part in dotted.split("."):
        pat = re.compile(r"^(\s*)(?:def|class)\s+" + re.escape(part) + r"\b")
        for i in range(start, len(lines)):
            m = pat.match(lines[i])
            if m and len(m.group(1)) > indent:
                start, indent = i, len(m.group(1))
                break
        else:
            return None
    end = start
    for i in range(start + 1, len(lines)):
        ln = lines[i]
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent and not ln.lstrip().startswith((")", "]")):
            break
        if ln.strip():
            end = i
    return start + 1, end + 1


def test_docs_pages_exist():
    missing = [p for p in PAGES if not (DOCS / p).is_file()]
    assert not missing


def test_code_links_point_at_the_named_function():
    checked, problems = 0, []
    for md in sorted(DOCS.glob("*.md")):
        for m in CODE_LINK.finditer(md.read_text()):
            name, rel, a, b = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            target = (md.parent / rel).resolve()
            span = _definition_span(target, name) if target.is_file() else None
            checked += 1
            if span != (a, b):
                problems.append(f"{md.name}: {name} in {rel} is at {span}, the link says L{a}-L{b}")
    assert checked >= 30, checked
    assert not problems, "\n".join(problems)


def test_relative_links_resolve_and_index_reaches_everything():
    bad = []
    for md in sorted(DOCS.glob("*.md")):
        for target in ANY_LINK.findall(md.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists():
                bad.append(f"{md.name} -> {target}")
    assert not bad, bad
    index = (DOCS / "index.md").read_text()
    for page in PAGES[1:]:
        assert f"]({page})" in index, page
    for lesson in LESSONS:
        assert f"](examples/{lesson})" in index, lesson


def test_gradient_check_commands_select_tests():
    """Each layer page's ``pytest tests/test_gradcheck.py -k EXPR`` must select at least one test."""
    exprs = {}
    for page in ("conv.md", "pooling.md", "batchnorm.md", "relu.md", "dense.md", "softmax_cross_entropy.md"):
        found = re.findall(r"python -m pytest tests/test_gradcheck\.py -k (\"[^\"]+\"|\S+)", (DOCS / page).read_text())
        assert found, f"{page} gives no gradient-check command"
        for e in found:
            exprs[e.strip('"')] = page
    script = (
        "import sys, pytest\n"
        "class Count:\n"
        "    n = 0\n"
        "    def pytest_collection_finish(self, session):\n"
        "        Count.n = len(session.items)\n"
        "for expr in sys.argv[1:]:\n"
        "    c = Count()\n"
        "    pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests/test_gradcheck.py', '-k', expr],"
        " plugins=[c])\n"
        "    print('SELECTED', c.n, expr, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *exprs], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    counts = {line.split(" ", 2)[2]: int(line.split(" ", 2)[1]) for line in proc.stdout.splitlines()
              if line.startswith("SELECTED")}
    assert set(counts) == set(exprs), proc.stdout[-3000:] + proc.stderr[-3000:]
    empty = [f"{exprs[e]}: -k {e!r}" for e, n in counts.items() if n == 0]
    assert not empty, empty


def _conv_snippet():
    text = (DOCS / "conv.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = [b for b in blocks if "grad_w" in b and "grad_x" in b]
    assert len(code) == 1
    return code[0]


@pytest.mark.parametrize("stride,padding,dilation", [((1, 1), (1, 1), (1, 1)), ((2, 2), (1, 0), (1, 1)),
                                                     ((2, 1), (2, 1), (2, 1)), ((3, 2), (0, 1), (1, 2))])
def test_conv_backward_identities(stride, padding, dilation):
    """conv.md: dW is the input correlated with dY, dX the full convolution of the zero-stuffed dY
    with the flipped kernel; its snippet must agree with conv2d_backward."""
    from minicnn.backends.numpy.conv import conv2d_backward, conv2d_forward

    rng = np.random.default_rng(0)
    N, C, H, W, K, R, S = 2, 3, 9, 8, 4, 3, 2
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, R, S))
    dy = rng.standard_normal(conv2d_forward(x, w, None, stride, padding, dilation, 1).shape)
    dx, dw, _ = conv2d_backward(dy, x, w, stride, padding, dilation, 1)
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    P, Q = dy.shape[2:]
    scope = dict(np=np, x=x, w=w, dy=dy, N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q, sh=sh, sw=sw, ph=ph, pw=pw,
                 dh=dh, dw=dw_)
    exec(_conv_snippet(), scope)
    np.testing.assert_allclose(scope["grad_w"], dw, atol=1e-12)
    np.testing.assert_allclose(scope["grad_x"], dx, atol=1e-12)
