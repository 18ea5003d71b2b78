"""The Fashion-MNIST lessons (docs/examples/15_ to 18_) against independent references, and the
numbers docs/fashion_lessons.md states, recomputed.

The references are written here with numpy alone: the trained net's forward pass (correlation by
sliding windows, max pooling by reshaping), Grad-CAM's closed form for this net, the filter bank's
correlation, a confusion matrix counted with ``np.add.at``; the saliency map is checked against
PyTorch's autograd. Everything reads Debian's Fashion-MNIST and skips, saying so, only when those
files are absent (as tests/test_fashion_mnist.py does). The 10,000 test images go through the net
once per session (the ``full`` fixture).
"""
import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import FashionMNIST
from minicnn.data.mnist import DEBIAN_FASHION_MNIST
from minicnn.models.fashion import fashion_convnet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PAGE = ROOT / "docs" / "fashion_lessons.md"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HAVE_DEBIAN = all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, f + ".gz")) for f in FILES)
pytestmark = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} "
                            "(apt-get install dataset-fashion-mnist; .ci/run does)")


def _lesson(name):
    """Import a lesson script as a module (its ``main`` does not run)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"lesson_{name[:2]}", EXAMPLES / name)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXAMPLES))
    return mod


def _stated(*snippets):
    """Each snippet appears, word for word, on the lessons' page."""
    text = " ".join(PAGE.read_text().split())
    missing = [s for s in snippets if s not in text]
    assert not missing, f"{PAGE.name} does not state {missing}"


# -- references in numpy -----------------------------------------------------------------------------

def _correlate(x, w, pad):
    """Cross-correlation (what conv layers compute) of x (N, C, H, W) with w (K, C, R, S), zero padding
    ``pad``, stride 1, in float64."""
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # (N, C, H, W, R, S)
    return np.einsum("nchwrs,kcrs->nkhw", win, np.asarray(w, np.float64), optimize=True)


def _pool(a):
    n, c, h, w = a.shape
    return a.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _forward(sd, x):
    """The 2-conv net, layer by layer, from its state dict: a dict of the activations we look at."""
    a1 = np.maximum(_correlate(x, sd["0.weight"], 2) + sd["0.bias"].reshape(1, -1, 1, 1), 0.0)
    a2 = np.maximum(_correlate(_pool(a1), sd["3.weight"], 2) + sd["3.bias"].reshape(1, -1, 1, 1), 0.0)
    p2 = _pool(a2)
    logits = p2.reshape(len(x), -1) @ np.asarray(sd["8.weight"], np.float64).T + sd["8.bias"]
    return {"a1": a1, "a2": a2, "p2": p2, "logits": logits}


def _grad_cam_formula(sd, a2, c):
    """Grad-CAM at the ReLU after conv2 for class c, not normalised: alpha_k is d logit_c / d A_k
    averaged over the 14x14 map; through the max pool (each window passes its gradient to one cell)
    and the linear layer that is the sum of W[c, k, :, :] over the 7x7 pooled cells / 196."""
    w = np.asarray(sd["8.weight"], np.float64).reshape(10, 64, 7, 7)
    alpha = w[c].sum(axis=(1, 2)) / 196.0
    return np.maximum(np.einsum("k,nkhw->nhw", alpha, a2), 0.0)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    X, y = FashionMNIST(train=False).arrays()
    return X, y


@pytest.fixture(scope="module")
def model():
    return fashion_convnet(weights="DEFAULT").eval()


@pytest.fixture(scope="module")
def sd(model):
    return {k: np.asarray(v, np.float64) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def full(data, model):
    """The shipped net's logits for all 10,000 test images (computed once)."""
    from minicnn.train import predict

    return predict(model, data[0])


@pytest.fixture(scope="module")
def firsts(data):
    """The first test image of each class, in class order (the lessons' examples)."""
    X, y = data
    idx = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
    return idx, X[idx]


# -- lesson 15: the filter bank --------------------------------------------------------------------

def test_gabor_filters_follow_the_formula():
    lesson = _lesson("15_fashion_filter_bank.py")
    g0, g45, g90, g135 = (lesson.gabor(theta_deg=a).astype(np.float64) for a in (0, 45, 90, 135))
    for g in (g0, g45, g90, g135):
        assert g.shape == (7, 7) and abs(g.mean()) < 1e-7  # zero mean: a flat patch answers 0
    # turning by 90 degrees swaps rows and columns; 45 and 135 degrees are mirror images
    np.testing.assert_allclose(g90, g0.T, atol=1e-6)
    np.testing.assert_allclose(g135, g45[:, ::-1], atol=1e-6)
    # the formula at one cell by hand: 0 degrees, one pixel right of the centre and two below
    raw = np.exp(-(1.0 ** 2 + (0.6 * 2.0) ** 2) / (2 * 1.8 ** 2)) * np.cos(2 * np.pi * 1.0 / 4.0)
    r = np.arange(7) - 3.0
    grid = np.exp(-(r[None, :] ** 2 + (0.6 * r[:, None]) ** 2) / (2 * 1.8 ** 2)) * np.cos(2 * np.pi * r[None, :] / 4.0)
    assert g0[5, 4] == pytest.approx(raw - grid.mean(), abs=1e-6)
    names, w = lesson.filter_bank()
    assert w.shape == (7, 1, 7, 7) and w.dtype == np.float32 and len(names) == 7
    np.testing.assert_array_equal(w[4, 0, 2:5, 2:5], [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    assert w[4].sum() == 0 and np.count_nonzero(w[4]) == 6


def test_filter_bank_outputs_equal_numpy_correlation(data):
    lesson = _lesson("15_fashion_filter_bank.py")
    X, y = data
    _, w = lesson.filter_bank()
    x = X[:64]
    np.testing.assert_allclose(lesson.responses(x, w), _correlate(x, w, 3), atol=2e-5)
    # the orientation energy: the mean over each class's images of the mean squared response
    e = lesson.orientation_energy(x, y[:64], w, batch=20)
    ref = (_correlate(x, w[:4], 3) ** 2).mean(axis=(2, 3))
    for c in range(10):
        np.testing.assert_allclose(e[c], ref[y[:64] == c].mean(axis=0), rtol=1e-5)


def test_filter_bank_page_numbers(data):
    """Trousers put most of their Gabor energy at 0 degrees (vertical structure), sneakers at 90."""
    lesson = _lesson("15_fashion_filter_bank.py")
    X, y = data
    _, w = lesson.filter_bank()
    shares = {}
    for c in (1, 7):
        e = (_correlate(X[y == c], w[:4], 3) ** 2).mean(axis=(0, 2, 3))
        shares[c] = e / e.sum()
    assert shares[1].argmax() == 0 and shares[7].argmax() == 2
    _stated(f"trousers put {shares[1][0]:.2f} of their Gabor energy", f"sneakers {shares[7][2]:.2f} at 90 degrees")


# -- lesson 16: filters and maps -----------------------------------------------------------------------

def test_feature_maps_equal_numpy_forward(data, model, sd):
    lesson = _lesson("16_fashion_filters.py")
    from minicnn import gradcam

    X, y = data
    picks = [int(np.flatnonzero(y == 6)[0]), int(np.flatnonzero(y == 7)[0])]
    assert picks == [4, 9]  # the page's shirt and sneaker
    ref = _forward(sd, X[picks])
    a1 = gradcam.layer_activation(model, X[picks], lesson.CONV1_RELU)
    a2 = gradcam.layer_activation(model, X[picks], lesson.CONV2_RELU)
    np.testing.assert_allclose(a1, ref["a1"], atol=1e-5)
    np.testing.assert_allclose(a2, ref["a2"], atol=1e-4)
    assert (ref["logits"].argmax(1) == [6, 7]).all()
    live = (ref["a2"].reshape(2, 64, -1).max(axis=2) > 0).sum(axis=1)
    pos1, pos2 = round(100 * float((ref["a1"] > 0).mean())), round(100 * float((ref["a2"] > 0).mean()))
    _stated(f"{pos1}% of the conv1 values are positive", f"only {pos2}% of the conv2 values",
            f"{live[0]} of the 64 conv2 maps for the shirt and {live[1]} for the sneaker")
    shirt, sneaker = lesson.separating_maps(ref["a2"][0], ref["a2"][1])
    d = ref["a2"][0].mean(axis=(1, 2)) - ref["a2"][1].mean(axis=(1, 2))
    assert d[shirt].min() >= np.sort(d)[-4] and d[sneaker].max() <= np.sort(d)[3]
    # the mosaic keeps signs: each filter scaled by its own largest |weight|
    m = lesson.signed_mosaic(sd["0.weight"])
    assert np.nanmax(np.abs(m)) == pytest.approx(1.0) and np.nanmin(m) < 0


# -- lesson 17: Grad-CAM, logit maps, saliency ------------------------------------------------------------

def test_grad_cam_equals_the_reference_formula(firsts, model, sd):
    from minicnn import gradcam

    idx, x = firsts
    ref = _forward(sd, x)
    pred = ref["logits"].argmax(axis=1)
    # the predicted class of each class's first test image, all at once (the lesson's 17_grad_cam.png)
    cams = gradcam.grad_cam(model, x, class_idx=None, layer=4, upsample=False)
    raw = np.stack([_grad_cam_formula(sd, ref["a2"][i:i + 1], pred[i])[0] for i in range(10)])
    # float32 against the float64 formula: 10 images put the 32->64 layer on Winograd F(2x2, 5x5),
    # whose rounding (about 5e-6 of the layer's output, docs/kernels.md) the maps' sums over 64
    # channels of both signs amplify: up to 6e-5 measured on these peak-normalised (0..1) maps
    tol = 1e-4
    np.testing.assert_allclose(cams, raw / raw.max(axis=(1, 2), keepdims=True), atol=tol)
    # every class on every image (17_grad_cam_classes.png), and the lesson's own closed form
    lesson = _lesson("17_fashion_grad_cam.py")
    for c in range(10):
        want = _grad_cam_formula(sd, ref["a2"], c)
        peak = want.max(axis=(1, 2), keepdims=True)
        got = gradcam.grad_cam(model, x, class_idx=c, layer=lesson.CAM_LAYER, upsample=False)
        np.testing.assert_allclose(got, np.where(peak > 0, want / np.where(peak > 0, peak, 1), 0), atol=tol)
        np.testing.assert_allclose(lesson.grad_cam_by_hand(model, x, c), want, rtol=1e-4, atol=1e-6)


def test_grad_cam_page_numbers(firsts, sd):
    """On the shirt the Sandal map peaks highest of all ten though its logit is the lowest."""
    idx, x = firsts
    ref = _forward(sd, x[6:7])
    peaks = np.array([_grad_cam_formula(sd, ref["a2"], c).max() for c in range(10)])
    logits = ref["logits"][0]
    assert peaks.argmax() == 5 and logits.argmin() == 5 and logits.argmax() == 6
    _stated(f"the Sandal map peaks highest of all ten, though its logit is {logits[5]:.1f}",
            f"Shirt (logit {logits[6]:.1f}) only third, at {peaks[6] / peaks.max():.2f} of that peak")
    assert np.argsort(-peaks)[2] == 6


def test_logit_maps_sum_to_the_logits(firsts, model, sd):
    lesson = _lesson("17_fashion_grad_cam.py")
    idx, x = firsts
    ref = _forward(sd, x)
    split = lesson.logit_maps(model, x)
    w = np.asarray(sd["8.weight"]).reshape(10, 64, 7, 7)
    np.testing.assert_allclose(split, np.einsum("ckhw,nkhw->nchw", w, ref["p2"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(split.sum(axis=(2, 3)) + sd["8.bias"], ref["logits"], atol=1e-4)


def test_saliency_equals_torch_autograd(firsts, model, sd):
    torch = pytest.importorskip("torch")
    from minicnn import gradcam

    idx, x = firsts
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(3136, 10)).double()
    with torch.no_grad():
        for key, v in sd.items():
            layer, what = key.split(".")
            getattr(net[int(layer) if layer != "8" else 7], what).copy_(torch.from_numpy(v))
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    out = net(xt)
    out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    want = xt.grad.numpy()
    # the same arithmetic in float64 on both sides: equal to rounding
    got64 = gradcam.input_gradient(fashion_convnet(weights="DEFAULT").eval().double(), x.astype(np.float64))
    assert got64.shape == want.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(got64, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    # the shipped float32 net, as the lesson runs it: where two taps of a max-pool window lie within
    # float32 rounding of each other, float32 and float64 may pick different winners and route that
    # window's gradient elsewhere (the CPU's GEMM rounding decides which windows; on an AVX2 EPYC 2
    # of these 10 images had such a window, moving 2% of their gradient). The rest is float32 rounding.
    got = gradcam.input_gradient(model, x)
    err = [np.linalg.norm(got[i] - want[i]) / np.linalg.norm(want[i]) for i in range(len(x))]
    assert max(err) < 0.1 and np.median(err) < 1e-5, err


# -- lesson 18: the confusion matrix and the mistakes ---------------------------------------------------

def _results_page_matrix():
    """The shipped net's confusion matrix printed in docs/results.md (in its section; the other
    runs' sections have their own)."""
    text = (ROOT / "docs" / "results.md").read_text()
    start = text.index("## `fashion_convnet`:")
    text = text[start:text.index("\n## ", start)]
    rows = re.findall(r"^\s+(\d)\s+((?:\d+\s+){10})\|\s+1000", text, flags=re.M)
    assert len(rows) == 10
    return np.array([[int(v) for v in r[1].split()] for r in rows])


def test_confusion_matrix_on_the_test_set(data, full):
    from minicnn.metrics import confusion_matrix

    X, y = data
    pred = full.argmax(axis=1)
    counted = np.zeros((10, 10), np.int64)
    np.add.at(counted, (y, pred), 1)
    cm = confusion_matrix(y, pred, 10)  # what lesson 18 draws
    np.testing.assert_array_equal(cm, counted)
    assert cm.sum() == 10_000 and cm.sum(axis=1).tolist() == [1000] * 10
    m = re.search(r"Test accuracy \*\*([\d.]+)\*\* \(([\d,]+)/10,000", (ROOT / "docs" / "results.md").read_text())
    stated = int(m.group(2).replace(",", ""))
    assert float(m.group(1)) == stated / 10_000
    assert np.trace(cm) == stated == 9210
    np.testing.assert_array_equal(cm, _results_page_matrix())
    off = cm.sum() - np.trace(cm)
    blocks = sum(int(cm[i, j]) for b in ((0, 2, 3, 4, 6), (5, 7, 9)) for i in b for j in b if i != j)
    _stated(f"Accuracy ({np.trace(cm) / 10_000:.4f} here)", f"{blocks} of the {off} confuse two garments", f"{cm[6, 6]} of the 1,000 shirts",
            f"{cm[6, 0]} called T-shirt/top", f"{cm[0, 6]} T-shirts called Shirt",
            f"{cm[4, 2]} coats called Pullover", f"{cm[9, 7]} ankle boots called Sneaker")


def test_confident_mistakes(data, full):
    lesson = _lesson("18_fashion_mistakes.py")
    X, y = data
    idx, said, conf = lesson.confident_mistakes(full, y)
    z = full.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    wrong = np.flatnonzero(p.argmax(1) != y)
    assert sorted(idx.tolist()) == wrong.tolist() and len(idx) == 790
    np.testing.assert_allclose(conf, p[idx, said], rtol=1e-12)
    assert (np.diff(conf) <= 0).all() and (said != y[idx]).all()
    top = p.max(axis=1)
    ok = p.argmax(1) == y
    _stated(f"{len(idx)} mistakes", f"{int((conf > 0.99).sum())} of them with more than 99% confidence",
            f"{top[ok].mean():.3f} when it is right and {top[~ok].mean():.3f} when it is wrong",
            f"#{idx[0]} (a T-shirt/top, said Dress with probability {conf[0]:.4f})",
            f"#{idx[1]} (a Sneaker, said Ankle boot)", f"#{idx[2]} (a Trouser, said Dress)")
    assert [(y[i], s) for i, s in zip(idx[:3], said[:3])] == [(0, 3), (7, 9), (1, 3)]
