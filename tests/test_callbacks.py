"""Callbacks of ``fit`` (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau) and ``lr_find``,
checked by what they do to a run: the epoch they stop at, the file they write, the rates they set."""
import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, optim
from minicnn.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, load_checkpoint
from minicnn.data import load_digits
from minicnn.train import DataLoader, fit


def _data(n=160):
    X, y = load_digits("train")
    return X[:n], y[:n]


def _model(seed=0):
    mc.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_early_stopping_counts_patience_from_the_best_epoch():
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.05)
    losses = [1.0, 0.8, 0.78, 0.79, 0.5, 0.6, 0.55, 0.52]
    stopped = next(e for e, v in enumerate(losses, 1) if es.on_epoch_end(e, {"val_loss": v}))
    # 0.78 is not better than 0.8 by more than 0.05: epochs 3 and 4 bring no improvement
    assert stopped == es.stopped_epoch == 4 and es.best_epoch == 2 and es.best == 0.8
    es = EarlyStopping(monitor="val_accuracy", patience=1)
    assert es.mode == "max"
    assert [es.on_epoch_end(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.6, 0.6], 1)] == \
        [False, False, True]
    with pytest.raises(KeyError, match="'val_loss' is not in the epoch's logs"):
        EarlyStopping().on_epoch_end(1, {"loss": 1.0})


def test_early_stopping_stops_fit_and_restores_the_best_weights():
    X, y = _data()
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.5)
    seen = []

    class Record:
        def set_fit_state(self, state):
            self.state = state

        def on_epoch_end(self, epoch, logs):
            seen.append({k: v.copy() for k, v in self.state.model.state_dict().items()})

    # the validation loss is scored on noise labels, so it soon stops improving
    y_noise = np.random.default_rng(1).integers(0, 10, size=len(y))
    es = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X, y), (X, y_noise), epochs=30, progress=False,
               callbacks=[Record(), es])
    assert hist.epochs == es.stopped_epoch < 30
    best_epoch, best = hist.best("val_loss")
    assert es.best_epoch == best_epoch and es.best == pytest.approx(best)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, seen[best_epoch - 1][k], err_msg=k)


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    X, y = _data()
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.3)
    y_noise = np.random.default_rng(1).integers(0, 10, size=len(y))
    ck = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss")
    every = ModelCheckpoint(tmp_path / "e{epoch}_{val_loss:.3f}.safetensors", save_best_only=False)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X, y), (X, y_noise), epochs=6, progress=False,
               callbacks=[ck, every])
    best_epoch, _ = hist.best("val_loss")
    assert ck.best_epoch == best_epoch
    saved = load_checkpoint(tmp_path / "best.safetensors", restore_rng=False)
    assert saved["epoch"] == best_epoch and saved["extra"]["best"]["epoch"] == best_epoch
    assert list(saved["history"]["val_loss"]) == hist["val_loss"][:best_epoch]
    names = sorted(p.name for p in tmp_path.glob("e*.safetensors"))
    assert names == sorted(f"e{e}_{v:.3f}.safetensors" for e, v in enumerate(hist["val_loss"], 1))
    with pytest.raises(mc.errors.MinicnnError, match="use it as a callback"):
        ModelCheckpoint(tmp_path / "x.safetensors").on_epoch_end(1, {"val_loss": 1.0})


def _plateau_rates(sched_factory, metrics, step):
    out = []
    for m in metrics:
        step(m)
        out.append(sched_factory())
    return out


PLATEAU_CASES = [
    dict(mode="min", factor=0.5, patience=1),
    dict(mode="min", factor=0.1, patience=0, threshold=0.1, threshold_mode="abs", cooldown=2, min_lr=0.002),
    dict(mode="max", factor=0.3, patience=2, threshold=0.01),
    dict(mode="min", factor=0.5, patience=0, min_lr=[0.05, 0.0001]),
]
METRICS = [1.0, 0.9, 0.95, 0.95, 0.89, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6, 0.49, 0.7]


def _two_groups():
    p, q = nn.Parameter(np.zeros(2, np.float32)), nn.Parameter(np.zeros(2, np.float32))
    return optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.01}], lr=0.1)


def test_reduce_lr_on_plateau_by_hand():
    opt = _two_groups()
    s = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    rates = []
    for m in [1.0, 1.0, 1.0, 0.5, 0.6, 0.7]:
        s.step(m)
        rates.append(opt.param_groups[0]["lr"])
    # two bad epochs (> patience 1) halve it: after epoch 3, and after epoch 6
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("kw", PLATEAU_CASES)
def test_reduce_lr_on_plateau_matches_pytorch(kw):
    torch = pytest.importorskip("torch")
    opt = _two_groups()
    ours = ReduceLROnPlateau(opt, **kw)
    tp = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": [tp[0]]}, {"params": [tp[1]], "lr": 0.01}], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    for m in METRICS:
        ours.step(m)
        theirs.step(m)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-12)


def test_reduce_lr_on_plateau_as_a_fit_callback_and_its_state(tmp_path):
    X, y = _data()
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.3)
    y_noise = np.random.default_rng(1).integers(0, 10, size=len(y))
    cb = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X, y), (X, y_noise), epochs=6, progress=False, callbacks=[cb])
    # replay the rule on the recorded losses: the rate of epoch e+1 follows from val_loss up to e
    replay = ReduceLROnPlateau(_two_groups(), factor=0.5, patience=0)
    replay.optimizer.param_groups[0]["lr"] = 0.3
    expect = [0.3]
    for v in hist["val_loss"][:-1]:
        replay.step(v)
        expect.append(replay.optimizer.param_groups[0]["lr"])
    assert hist["lr"] == pytest.approx(expect)
    assert min(hist["lr"]) < 0.3  # it did reduce
    mc.save({"plateau": cb.state_dict()}, tmp_path / "p.safetensors")
    again = ReduceLROnPlateau(opt, factor=0.5, patience=0)
    again.load_state_dict(mc.load(tmp_path / "p.safetensors")["plateau"])
    assert again.best == cb.best and again.num_bad_epochs == cb.num_bad_epochs


def test_lr_find_sweeps_restores_and_suggests():
    X, y = _data(256)
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    loader = DataLoader(X, y, batch_size=32, shuffle=True, seed=3)
    res = mc.lr_find(model, nn.CrossEntropyLoss(), opt, loader, start_lr=1e-4, end_lr=1e3, num_iter=60)
    lrs = np.asarray(res.lrs)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e3 / 1e-4) ** (1 / 59), rtol=1e-9)  # exponential sweep
    assert lrs[0] == 1e-4
    # the loss blows up at large rates and the test stops once it is 4x the best
    assert len(lrs) < 60 and res.losses[-1] > 4 * min(res.losses)
    assert 1e-4 < res.suggestion < lrs[int(np.argmin(res.losses))]
    # where the suggestion points, the smoothed loss is falling
    i = res.lrs.index(res.suggestion)
    assert res.losses[i + 1] < res.losses[i - 1]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert opt.param_groups[0]["lr"] == 0.123 and opt.state == {}
    assert loader.state_dict() == DataLoader(X, y, seed=3).state_dict()  # the shuffling is untouched too


def test_lr_find_plot():
    pytest.importorskip("matplotlib")
    X, y = _data(64)
    model = _model()
    rng_before = mc.random.get_rng().bit_generator.state
    res = mc.lr_find(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (X, y), num_iter=10)
    assert mc.random.get_rng().bit_generator.state == rng_before  # the (X, y) pair's shuffles are undone too
    ax = res.plot()
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), res.lrs)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        mc.lr_find(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (X, y), start_lr=1.0, end_lr=0.1)
