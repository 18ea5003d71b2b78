"""The training loop, the metrics and the digits convnet: the engine learns, and every number the
loop reports is the sample-weighted average it claims to be."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn as mc
from minicnn import nn, optim
from minicnn.data import load_digits
from minicnn.errors import MinicnnError
from minicnn.metrics import accuracy, confusion_matrix, error_rate, format_confusion_matrix, top_k_accuracy
from minicnn.models import digits_convnet, get_model
from minicnn.train import DataLoader, History, evaluate, fit, format_epoch, predict


def _digits_subset(n, seed=0):
    X, y = load_digits("train")
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    return X[idx], y[idx]


def _ref_cross_entropy(logits, y):
    """Mean softmax cross-entropy in float64, straight from the definition."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


# -- DataLoader --------------------------------------------------------------------------------

def test_loader_batches_in_order_with_short_last_batch():
    X = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    dl = DataLoader(X, y, batch_size=3)
    batches = list(dl)
    assert [len(xb) for xb, _ in batches] == [3, 3, 3, 1]
    assert len(dl) == 4 and dl.num_samples == 10
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), X)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)


def test_loader_drop_last():
    X, y = np.zeros((10, 1)), np.arange(10)
    dl = DataLoader(X, y, batch_size=3, drop_last=True)
    assert [len(yb) for _, yb in dl] == [3, 3, 3]
    assert len(dl) == 3 and dl.num_samples == 9
    assert len(DataLoader(X, y, batch_size=5, drop_last=True)) == 2  # nothing dropped when it divides


def test_loader_shuffle_is_a_permutation_new_each_epoch_and_seeded():
    X = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    dl = DataLoader(X, y, batch_size=8, shuffle=True, seed=123)
    e1 = np.concatenate([yb for _, yb in dl])
    e2 = np.concatenate([yb for _, yb in dl])
    assert sorted(e1.tolist()) == list(range(50)) == sorted(e2.tolist())
    assert not np.array_equal(e1, e2) and not np.array_equal(e1, y)
    # X rows travel with their labels
    for xb, yb in dl:
        np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))
    again = DataLoader(X, y, batch_size=8, shuffle=True, seed=123)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in again]), e1)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in again]), e2)
    other = DataLoader(X, y, batch_size=8, shuffle=True, seed=124)
    assert not np.array_equal(np.concatenate([yb for _, yb in other]), e1)
    # the same numpy generator draws the same order: the seed is all that matters
    np.testing.assert_array_equal(e1, np.random.default_rng(123).permutation(50))


def test_loader_without_seed_follows_manual_seed():
    y = np.arange(40)
    orders = []
    for _ in range(2):
        mc.manual_seed(7)
        orders.append(np.concatenate([yb for _, yb in DataLoader(y[:, None], y, 16, shuffle=True)]))
    np.testing.assert_array_equal(orders[0], orders[1])
    mc.manual_seed(8)
    assert not np.array_equal(orders[0], np.concatenate([yb for _, yb in DataLoader(y[:, None], y, 16, shuffle=True)]))


def test_loader_transform_gets_the_loader_generator():
    X = np.zeros((6, 1, 2, 2), dtype=np.float32)
    y = np.zeros(6, dtype=np.int64)

    def jitter(xb, rng=None):
        return xb + rng.random((len(xb), 1, 1, 1)).astype(xb.dtype)

    def run(seed):
        return np.concatenate([xb for xb, _ in DataLoader(X, y, 4, shuffle=True, seed=seed, transform=jitter)])

    a, b, c = run(5), run(5), run(6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert X.max() == 0.0  # the source array is untouched
    plain = DataLoader(X, y, 4, transform=lambda xb: xb * 0 + 2)
    assert all(np.all(xb == 2) for xb, _ in plain)


def test_loader_bad_input_names_the_shapes():
    with pytest.raises(ValueError, match=r"X of shape \(5, 3\) and y of shape \(4,\)"):
        DataLoader(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DataLoader(np.zeros((5, 3)), np.zeros(5), batch_size=0)


# -- metrics -------------------------------------------------------------------------------------

def test_accuracy_error_rate_top_k_by_hand():
    logits = np.array([
        [0.1, 0.7, 0.2],   # pred 1, order 1,2,0
        [0.5, 0.3, 0.2],   # pred 0, order 0,1,2
        [0.2, 0.2, 0.6],   # pred 2, order 2,0,1 (tie at 0.2 -> lower index first)
        [0.9, 0.05, 0.05],  # pred 0, order 0,1,2
    ])
    y = np.array([1, 2, 1, 0])
    assert accuracy(logits, y) == 0.5
    assert accuracy(np.array([1, 0, 2, 0]), y) == 0.5
    assert error_rate(logits, y) == 0.5
    assert top_k_accuracy(logits, y, 1) == 0.5
    assert top_k_accuracy(logits, y, 2) == 0.5   # sample 1: target 2 is third; sample 2: target 1 is third
    assert top_k_accuracy(logits, y, 3) == 1.0
    with pytest.raises(ValueError, match=r"k must lie in \[1, 3\]"):
        top_k_accuracy(logits, y, 4)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3,\)"):
        accuracy(logits, y[:3])


def test_confusion_matrix_by_hand():
    y_true = np.array([0, 0, 1, 2, 2, 2, 1])
    y_pred = np.array([0, 1, 1, 2, 0, 2, 1])
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), cm)
    np.testing.assert_array_equal(confusion_matrix(y_true, np.eye(3)[y_pred], 3), cm)  # from logits
    assert confusion_matrix(y_true, y_pred, 5).shape == (5, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        confusion_matrix(y_true, y_pred, 2)


@given(st.integers(1, 6), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60))
def test_confusion_matrix_matches_a_hand_count(k, pairs):
    pairs = [(t % k, p % k) for t, p in pairs]
    t = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    cm = confusion_matrix(t, p, k)
    hand = np.zeros((k, k), dtype=np.int64)
    for a, b in pairs:
        hand[a, b] += 1
    np.testing.assert_array_equal(cm, hand)
    assert np.trace(cm) / len(pairs) == pytest.approx(accuracy(p, t))


def test_format_confusion_matrix_is_a_readable_table():
    cm = np.array([[5, 1], [0, 4]])
    text = format_confusion_matrix(cm, labels=["cat", "dog"])
    lines = text.splitlines()
    assert "pred" in lines[0] and "cat" in lines[0] and "dog" in lines[0] and "recall" in lines[0]
    assert lines[2].split()[:3] == ["cat", "5", "1"] and lines[2].split()[-2:] == ["6", "0.833"]
    assert lines[3].split()[:3] == ["dog", "0", "4"] and lines[3].split()[-2:] == ["4", "1.000"]
    assert lines[-1] == "9/10 correct, accuracy 0.9000"
    with pytest.raises(ValueError, match="square"):
        format_confusion_matrix(np.zeros((2, 3)))


# -- the model -----------------------------------------------------------------------------------

def test_digits_convnet_shape_and_parameters():
    model = digits_convnet()
    assert isinstance(model, nn.Sequential)
    assert model(np.zeros((5, 1, 8, 8), np.float32)).shape == (5, 10)
    # conv 1->16 3x3, conv 16->32 3x3, linear 128->64, linear 64->10, each with bias
    assert model.num_parameters() == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (128 * 64 + 64) + (64 * 10 + 10) == 13706
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                                        "10.weight", "10.bias"]
    # same names with dropout, so weights move between the two
    assert list(digits_convnet(dropout=0.3).state_dict()) == list(model.state_dict())
    assert get_model("digits_convnet", num_classes=3)(np.zeros((1, 1, 8, 8))).shape == (1, 3)
    assert digits_convnet(image_size=16)(np.zeros((2, 1, 16, 16))).shape == (2, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        digits_convnet(image_size=10)


# -- the loop ------------------------------------------------------------------------------------

def _sgd_fit(model, X, y, epochs, lr=0.05, batch_size=32, val=None, seed=0, **kw):
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    loader = DataLoader(X, y, batch_size, shuffle=True, seed=seed)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    return fit(model, nn.CrossEntropyLoss(), opt, loader, val=val, epochs=epochs, scheduler=sched,
               progress=False, **kw)


@pytest.mark.slow
def test_the_engine_learns_digits():
    X_tr, y_tr, X_te, y_te = load_digits("both")
    mc.manual_seed(0)
    model = digits_convnet()
    hist = _sgd_fit(model, X_tr, y_tr, epochs=10, val=(X_te, y_te))
    assert hist["loss"][-1] < 0.1 < hist["loss"][0]
    scores = evaluate(model, nn.CrossEntropyLoss(), (X_te, y_te))
    assert scores["accuracy"] >= 0.95, scores
    assert hist["val_accuracy"][-1] == scores["accuracy"]
    # fit scored the same set in batches of 32, evaluate in one batch of 256: float32 sums differ slightly
    assert hist["val_loss"][-1] == pytest.approx(scores["loss"], rel=1e-6)


def test_history_keys_lr_and_consistency_with_evaluate():
    X, y = _digits_subset(100)
    Xv, yv = _digits_subset(37, seed=1)
    mc.manual_seed(0)
    model = digits_convnet()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X, y), val=(Xv, yv), epochs=3, batch_size=32,
               scheduler=sched, scheduler_step="epoch", progress=False)
    assert isinstance(hist, History) and isinstance(hist, dict)
    assert list(hist) == ["loss", "accuracy", "error_rate", "val_loss", "val_accuracy", "val_error_rate", "lr"]
    assert hist.epochs == 3 and all(len(v) == 3 for v in hist.values())
    assert hist["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert hist.lr is hist["lr"]
    for a, e in zip(hist["accuracy"] + hist["val_accuracy"], hist["error_rate"] + hist["val_error_rate"]):
        assert a + e == pytest.approx(1.0)
    last = evaluate(model, nn.CrossEntropyLoss(), (Xv, yv), batch_size=5)
    assert last["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-6)
    assert last["accuracy"] == hist["val_accuracy"][-1]
    assert hist.best("val_loss")[1] == min(hist["val_loss"])
    assert len(hist.seconds) == 3
    assert "val_acc" in format_epoch(1, 3, hist.last()) and "error_rate" not in format_epoch(1, 3, hist.last())


def test_training_averages_weight_the_short_last_batch():
    """With lr=0 the model never changes, so the epoch's reported loss and accuracy must equal the
    whole-set values computed from the definition, though the last batch has 4 of 100 samples."""
    X, y = _digits_subset(100)
    mc.manual_seed(1)
    model = digits_convnet()
    opt = optim.SGD(model.parameters(), lr=0.0)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(X, y, 32), epochs=1, progress=False)
    logits = predict(model, X)
    assert hist["loss"][0] == pytest.approx(_ref_cross_entropy(logits, y), rel=1e-5)
    assert hist["accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-12)
    # a batch-mean of batch means would give a different number here
    means = [_ref_cross_entropy(logits[i:i + 32], y[i:i + 32]) for i in range(0, 100, 32)]
    assert abs(np.mean(means) - hist["loss"][0]) > 1e-4


def test_evaluate_independent_of_batch_size_and_reduction():
    X, y = _digits_subset(101)
    mc.manual_seed(2)
    model = digits_convnet()
    a = evaluate(model, nn.CrossEntropyLoss(), (X, y), batch_size=7)
    b = evaluate(model, nn.CrossEntropyLoss(), (X, y), batch_size=1000)
    c = evaluate(model, nn.CrossEntropyLoss(reduction="sum"), DataLoader(X, y, 10))
    logits = predict(model, X, batch_size=13)
    ref = _ref_cross_entropy(logits, y)
    for r in (a, b, c):
        assert r["loss"] == pytest.approx(ref, rel=1e-5)
        assert r["accuracy"] == accuracy(logits, y)
        assert r["error_rate"] == pytest.approx(1 - accuracy(logits, y))
    assert set(a) == {"loss", "accuracy", "error_rate"}
    only = evaluate(model, None, (X, y), metrics=["top3_accuracy", lambda out, t: float(out.shape[1])])
    assert only == {"top3_accuracy": top_k_accuracy(logits, y, 3), "metric1": 10.0}


def test_predict_matches_forward_and_restores_mode():
    X, _ = _digits_subset(20)
    mc.manual_seed(3)
    model = digits_convnet(dropout=0.5)
    model.train()
    out = predict(model, X, batch_size=64)
    model.eval()
    with mc.no_grad():
        ref = mc.to_numpy(model(X))
    np.testing.assert_array_equal(out, ref)  # same single batch, eval mode: dropout off
    # smaller batches only change the float32 rounding of the matrix products
    np.testing.assert_allclose(predict(model, X, batch_size=6), ref, rtol=1e-5, atol=1e-6)
    model.train()
    predict(model, X)
    assert model.training
    model.eval()
    evaluate(model, nn.CrossEntropyLoss(), (X, np.zeros(20, np.int64)))
    assert not model.training


def test_callable_metrics_in_fit_are_sample_weighted():
    X, y = _digits_subset(50)
    mc.manual_seed(4)
    model = digits_convnet()
    frac_zero = float(np.mean(y == 0))
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.0), DataLoader(X, y, 16),
               metrics={"zeros": lambda out, t: float(np.mean(t == 0))}, progress=False)
    assert list(hist) == ["loss", "zeros", "lr"]
    assert hist["zeros"][0] == pytest.approx(frac_zero)


def test_callbacks_see_each_epoch_and_can_stop():
    X, y = _digits_subset(40)
    seen = []

    class Stopper:
        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, sorted(logs)))
            return epoch == 2

    model = digits_convnet()
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01), (X, y), epochs=5,
               progress=False, callbacks=[Stopper()])
    assert hist.epochs == 2
    assert [e for e, _ in seen] == [1, 2]
    assert seen[0][1] == sorted(["loss", "accuracy", "error_rate", "lr"])


def test_progress_bar_prints_one_line_per_epoch(capsys):
    X, y = _digits_subset(40)
    model = digits_convnet()
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01), (X, y), epochs=2, progress=True)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert all("loss" in line and "acc" in line for line in out)


def test_non_finite_loss_stops_with_a_clear_error():
    X, y = _digits_subset(40)
    X = X.copy()
    X[3, 0, 2, 2] = np.nan
    model = digits_convnet()
    with pytest.raises(MinicnnError, match="loss became nan at epoch 1, batch 1"):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01), DataLoader(X, y, 32),
            progress=False)


def test_fit_rejects_bad_arguments():
    X, y = _digits_subset(10)
    model = digits_convnet()
    opt = optim.SGD(model.parameters(), lr=0.01)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="scheduler_step"):
        fit(model, loss, opt, (X, y), scheduler_step="step", progress=False)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        fit(model, loss, opt, (X, y), metrics=["f1"], progress=False)
    with pytest.raises(ValueError, match=r"train must be a DataLoader, a dataset or an \(X, y\) pair"):
        fit(model, loss, opt, (X, y, y), progress=False)


def test_weights_round_trip_bit_identical(tmp_path):
    X_tr, y_tr = _digits_subset(200)
    X_te, _ = load_digits("test")
    mc.manual_seed(5)
    model = digits_convnet()
    _sgd_fit(model, X_tr, y_tr, epochs=2)
    path = tmp_path / "digits.safetensors"
    mc.save(model, path)
    mc.manual_seed(99)
    fresh = digits_convnet()
    assert not np.array_equal(predict(fresh, X_te), predict(model, X_te))
    fresh.load_state_dict(mc.load(path))
    np.testing.assert_array_equal(predict(fresh, X_te), predict(model, X_te))
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and np.array_equal(a, b)


def test_one_epoch_same_on_every_backend(backend_name):
    """The loop itself is backend-agnostic: the same seeded epoch gives the numpy reference's numbers."""
    X, y = _digits_subset(96)
    results = []
    for name in ("numpy", backend_name):
        with mc.backend(name):
            mc.manual_seed(6)
            model = digits_convnet()
            hist = _sgd_fit(model, X, y, epochs=1, batch_size=24, seed=1)
            results.append((hist["loss"][0], model.state_dict()))
    (loss_ref, sd_ref), (loss, sd) = results
    assert loss == pytest.approx(loss_ref, rel=1e-4)
    for k in sd_ref:
        np.testing.assert_allclose(sd[k], sd_ref[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.torch
def test_training_matches_pytorch():
    """Two epochs of SGD+momentum with the same weights and batches: the losses reported by fit and
    the final weights agree with a plain PyTorch loop."""
    torch = pytest.importorskip("torch")
    X, y = _digits_subset(110)
    mc.manual_seed(7)
    model = digits_convnet()
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(64, 10),
    )
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_losses = []
    for _ in range(2):
        total = 0.0
        for i in range(0, 110, 32):  # batches of 32, 32, 32, 14
            xb, yb = torch.from_numpy(X[i:i + 32]), torch.from_numpy(y[i:i + 32])
            opt_ref.zero_grad()
            loss = torch.nn.functional.cross_entropy(ref(xb), yb)
            loss.backward()
            opt_ref.step()
            total += loss.item() * len(yb)
        ref_losses.append(total / 110)
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
               DataLoader(X, y, 32), epochs=2, progress=False)
    np.testing.assert_allclose(hist["loss"], ref_losses, rtol=1e-5)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
