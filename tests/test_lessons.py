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
    "10_multilabel_resnet50.py": ["10_metrics.png", "10_examples.png"],
    "11_segmentation_unet.py": ["11_metrics.png", "11_overlays.png"],
    "12_keypoints.py": ["12_errors.png", "12_points.png"],
    "13_vgg_features.py": ["13_curves.png", "13_confusion.png"],
    "14_deep_dream_vgg19.py": ["14_fashion_dream.png", "14_fashion_channels.png", "14_vgg19_dream.png"],
    "15_fashion_filter_bank.py": ["15_filter_bank.png", "15_filter_responses.png", "15_orientation_energy.png"],
    "16_fashion_filters.py": ["16_conv1_filters.png", "16_conv1_maps.png", "16_conv2_maps.png", "16_top_maps.png"],
    "17_fashion_grad_cam.py": ["17_grad_cam_classes.png", "17_logit_maps.png", "17_grad_cam.png", "17_saliency.png"],
    "18_fashion_mistakes.py": ["18_confusion.png", "18_confident_mistakes.png", "18_confidence.png"],
}
# lessons that read the Fashion-MNIST test images: skipped, saying so, only when Debian's files are absent
FASHION_DATA = {"15_fashion_filter_bank.py", "16_fashion_filters.py", "17_fashion_grad_cam.py", "18_fashion_mistakes.py"}


# -- the numbers the lessons report, recomputed from what they saved, without minicnn.metrics --------

def _check_10(out):
    """Per-label F1 from TP/FP/FN counted in a loop; AP as the mean, over the positives, of the
    precision at each positive's rank (equal to the step sum when no two scores tie)."""
    z = np.load(out / "10_results.npz")
    t, s = z["targets"].astype(bool), z["scores"].astype(np.float64)
    assert t.shape == s.shape and t.shape[1] == 4
    aps = []
    for c in range(t.shape[1]):
        tp = sum(1 for i in range(len(t)) if t[i, c] and s[i, c] > 0)
        fp = sum(1 for i in range(len(t)) if not t[i, c] and s[i, c] > 0)
        fn = sum(1 for i in range(len(t)) if t[i, c] and not s[i, c] > 0)
        assert z["f1"][c] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, abs=1e-12)
        assert len(np.unique(s[:, c])) == len(s)  # no ties, so the simple formula applies
        rank = np.argsort(np.argsort(-s[:, c])) + 1  # 1-based rank of each sample
        pos_ranks = np.sort(rank[t[:, c]])
        aps.append(np.mean([(j + 1) / r for j, r in enumerate(pos_ranks)]))
        assert z["ap"][c] == pytest.approx(aps[-1], abs=1e-12)
    assert float(z["map"]) == pytest.approx(np.mean(aps), abs=1e-12)


def _check_11(out):
    """IoU per class from sets of pixel positions; mIoU over the classes present in either."""
    z = np.load(out / "11_results.npz")
    masks, pred = z["masks"], z["pred"]
    assert masks.shape == pred.shape and masks.ndim == 3
    ious = []
    for c in range(5):
        t = set(zip(*np.nonzero(masks == c)))
        p = set(zip(*np.nonzero(pred == c)))
        if not t and not p:
            assert np.isnan(z["iou"][c])
            continue
        ious.append(len(t & p) / len(t | p))
        assert z["iou"][c] == pytest.approx(ious[-1], abs=1e-12)
    assert float(z["miou"]) == pytest.approx(np.mean(ious), abs=1e-12)


def _check_12(out):
    """The mean pixel error as the mean of math.hypot over the points; the points lie in the image."""
    import math

    z = np.load(out / "12_results.npz")
    pts, pred = z["points"].astype(np.float64), z["pred"]
    assert pts.shape == pred.shape and pts.shape[1] == 2
    assert pts.min() >= 0 and pts.max() <= 31
    errs = [math.hypot(px - tx, py - ty) for (tx, ty), (px, py) in zip(pts, pred)]
    assert float(z["mean_error"]) == pytest.approx(sum(errs) / len(errs), rel=1e-12)


def _check_13(out):
    """Accuracy counted in a loop; the frozen blocks did not move at all, the fine-tuned block did."""
    z = np.load(out / "13_results.npz")
    labels, logits = z["labels"], z["logits"]
    right = sum(1 for t, row in zip(labels, logits) if int(np.argmax(row)) == int(t))
    assert float(z["accuracy"]) == pytest.approx(right / len(labels), abs=1e-12)
    assert float(z["frozen_change"]) == 0.0 and float(z["block_change"]) > 0.0


def _check_14(out):
    """DeepDream raised its objective: 0.5 * mean(A**2) of the shipped Fashion-MNIST net's layer,
    recomputed by running its children one by one on the saved images."""
    import minicnn as mc
    from minicnn.models.fashion import fashion_convnet

    z = np.load(out / "14_results.npz")
    model = fashion_convnet(weights="DEFAULT").eval()
    energies = []
    for x in (z["image"], z["dream"]):
        h = x[None].astype(np.float32)
        with mc.backend("numpy"), mc.no_grad():
            for m in list(model.children())[: int(z["layer"]) + 1]:
                h = m(h)
        energies.append(0.5 * float((np.asarray(h, np.float64) ** 2).mean()))
    assert float(z["before"]) == pytest.approx(energies[0], rel=1e-5)
    assert float(z["after"]) == pytest.approx(energies[1], rel=1e-5)
    assert energies[1] > 1.5 * energies[0]
    assert z["dream"].min() >= 0.0 and z["dream"].max() <= 1.0  # clipped to the input range


def _check_15(out):
    """The filter bank's responses, as minicnn's conv2d computed them, equal numpy's sliding-window
    correlation of the saved images with the saved filters (zero padding 3)."""
    z = np.load(out / "15_results.npz")
    x, w, r = z["images"].astype(np.float64), z["weights"].astype(np.float64), z["responses"]
    assert w.shape == (7, 1, 7, 7) and r.shape == (len(x), 7, 28, 28)
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x[:, 0], ((0, 0), (3, 3), (3, 3))), (7, 7), axis=(1, 2))
    np.testing.assert_allclose(r, np.einsum("nhwij,kij->nkhw", win, w[:, 0]), atol=1e-5)


def _check_17(out):
    """Grad-CAM of each image's predicted class at the ReLU after conv2 equals its closed form,
    relu(sum_k alpha_k A_k) with alpha_k the class's linear weights on pooled map k summed over the
    7x7 cells / 196, A from running the net's children one by one; the logit maps sum to the logits."""
    import minicnn as mc
    from minicnn.models.fashion import fashion_convnet

    z = np.load(out / "17_results.npz")
    model = fashion_convnet(weights="DEFAULT").eval()
    h = z["images"].astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        for m in list(model.children())[:5]:
            h = m(h)
    a = np.asarray(h, np.float64)
    w = np.asarray(model[8].weight.data, np.float64).reshape(10, 64, 7, 7)
    alpha = w[z["logits"].argmax(axis=1)].sum(axis=(2, 3)) / 196.0  # (N, 64)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", alpha, a), 0.0)
    cam /= cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(z["cams"], cam, atol=1e-5)
    b = np.asarray(model[8].bias.data, np.float64)
    np.testing.assert_allclose(z["logit_maps"].sum(axis=(2, 3)) + b, z["per_class_logits"], atol=1e-4)


def _check_18(out):
    """The confusion matrix counted in a loop; the mistakes are all wrong, sorted by the softmax
    probability of the wrong answer, computed here with math.exp."""
    import math

    z = np.load(out / "18_results.npz")
    labels, logits, cm = z["labels"], z["logits"].astype(np.float64), z["confusion"]
    counted = np.zeros((10, 10), np.int64)
    for t, row in zip(labels, logits):
        counted[int(t), int(np.argmax(row))] += 1
    np.testing.assert_array_equal(cm, counted)
    assert cm.sum() == len(labels)
    probs = []
    for i in z["mistakes"]:
        row = logits[i]
        assert int(np.argmax(row)) != int(labels[i])
        probs.append(1.0 / sum(math.exp(v - row.max()) for v in row))
    assert len(probs) == len(labels) - np.trace(cm)
    np.testing.assert_allclose(z["mistake_conf"], probs, rtol=1e-9)
    assert all(p >= q for p, q in zip(probs, probs[1:]))


RESULTS = {"10_multilabel_resnet50.py": _check_10, "11_segmentation_unet.py": _check_11, "12_keypoints.py": _check_12,
           "13_vgg_features.py": _check_13, "14_deep_dream_vgg19.py": _check_14,
           "15_fashion_filter_bank.py": _check_15, "17_fashion_grad_cam.py": _check_17,
           "18_fashion_mistakes.py": _check_18}


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
    if lesson in FASHION_DATA:
        from minicnn.data.mnist import DEBIAN_FASHION_MNIST

        files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        if not all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, f + ".gz")) for f in files):
            pytest.skip(f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} "
                        "(apt-get install dataset-fashion-mnist; .ci/run does)")
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
    if lesson in RESULTS:
        RESULTS[lesson](out)


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
