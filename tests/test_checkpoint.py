"""Checkpoints: ``mc.save``/``mc.load`` of nested state (as ``torch.save`` is used), optimizer and
scheduler state dicts through a file, and a run stopped after epoch k and resumed from its
checkpoint ending with exactly the weights of the uninterrupted run."""
import math
from collections import Counter, OrderedDict

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, optim
from minicnn.callbacks import ModelCheckpoint, load_checkpoint, save_checkpoint
from minicnn.data import load_digits
from minicnn.optim import lr_scheduler as lrs
from minicnn.serialization import load_metadata
from minicnn.train import DataLoader, fit


def _model(seed=0, dropout=0.0):
    mc.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * 4 * 4, 10))


def _assert_same(a, b, path="/"):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}{k}/")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}{i}/")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def test_nested_checkpoint_round_trip_keeps_structure_types_and_values(tmp_path):
    rng = np.random.default_rng(0)
    obj = OrderedDict(
        epoch=7, name="run-1", done=False, nothing=None, big=2 ** 100, neg=-3,
        floats=[1.5, float("nan"), float("inf"), -float("inf")],
        betas=(0.9, 0.999), nested={"a": {"b": [np.arange(3), (np.float32(2.5), np.int64(4))]}},
        int_keys={0: rng.standard_normal((2, 3)).astype(np.float32), 5: {"step": 3}},
        milestones=Counter({3: 1, 6: 2}), scalar=np.array(3.25), empty={}, empty_list=[],
    )
    path = tmp_path / "ck.safetensors"
    mc.save(obj, path)
    got = mc.load(path)
    expect = dict(obj)
    expect["nested"] = {"a": {"b": [np.arange(3), (2.5, 4)]}}  # numpy scalars come back as Python numbers
    _assert_same(got, expect)
    assert isinstance(got["milestones"], Counter) and isinstance(got["betas"], tuple)
    assert load_metadata(path)["format"] == "minicnn"


def test_flat_state_dict_is_still_a_plain_safetensors_file(tmp_path):
    model = _model()
    mc.save(model, tmp_path / "m.safetensors")
    assert "minicnn_tree" not in load_metadata(tmp_path / "m.safetensors")
    got = mc.load(tmp_path / "m.safetensors")
    assert list(got) == list(model.state_dict())


def test_array_names_never_collide(tmp_path):
    # "a/b" as one key and as a path a -> b both want the name "a/b"
    obj = {"a/b": np.zeros(1), "a": {"b": np.ones(1)}}
    mc.save(obj, tmp_path / "c.safetensors")
    got = mc.load(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(got["a/b"], np.zeros(1))
    np.testing.assert_array_equal(got["a"]["b"], np.ones(1))


def test_unsupported_objects_get_one_clear_line(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store a object at 'extra/fn'"):
        mc.save({"extra": {"fn": object()}}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match=r"cannot store a set at 'tags'"):
        mc.save({"tags": {1, 2}}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match=r"save\(\) takes a Module.*got int"):
        mc.save(3, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="keys must be str, int"):
        mc.save({(1, 2): 3}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file"):
        mc.load(tmp_path / "nope.safetensors")


def _step(model, opt, x, y):
    loss = nn.CrossEntropyLoss()
    model.zero_grad()
    loss(model(x), y)
    model.backward_params(loss.backward())
    opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=0.01),
    lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_saved_optimizer_continues_exactly(make, tmp_path):
    X, y = load_digits("train")
    x, t = X[:16], y[:16]
    a = _model(1)
    opt_a = make(a.parameters())
    for _ in range(2):
        _step(a, opt_a, x, t)
    mc.save(opt_a, tmp_path / "opt.safetensors")  # an optimizer saves its state_dict, as a Module does
    mc.save(a, tmp_path / "model.safetensors")
    b = _model(2)
    b.load_state_dict(mc.load(tmp_path / "model.safetensors"))
    opt_b = make(b.parameters())
    opt_b.load_state_dict(mc.load(tmp_path / "opt.safetensors"))
    for _ in range(3):
        _step(a, opt_a, x, t)
        _step(b, opt_b, x, t)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        if not k.endswith("num_batches_tracked"):  # Module.load_state_dict leaves the counter alone
            np.testing.assert_array_equal(va, vb, err_msg=k)


SCHEDULERS = {
    "step": lambda o: lrs.StepLR(o, step_size=2, gamma=0.5),
    "multistep": lambda o: lrs.MultiStepLR(o, milestones=[2, 3, 3, 6], gamma=0.5),
    "exponential": lambda o: lrs.ExponentialLR(o, gamma=0.9),
    "cosine": lambda o: lrs.CosineAnnealingLR(o, T_max=4, eta_min=0.001),
    "onecycle": lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=12),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_state_through_a_file_resumes_the_schedule(name, tmp_path):
    def make():
        p = nn.Parameter(np.zeros(2, dtype=np.float32))
        q = nn.Parameter(np.zeros(3, dtype=np.float32))
        opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.05}], lr=0.1, momentum=0.9)
        return opt, SCHEDULERS[name](opt)

    opt_a, sched_a = make()
    ref = []
    for i in range(10):
        opt_a.step()
        sched_a.step()
        ref.append(sched_a.get_last_lr())
        if i == 4:
            mc.save({"optimizer": opt_a.state_dict(), "scheduler": sched_a.state_dict()}, tmp_path / "s.safetensors")
    opt_b, sched_b = make()
    ck = mc.load(tmp_path / "s.safetensors")
    opt_b.load_state_dict(ck["optimizer"])
    sched_b.load_state_dict(ck["scheduler"])
    assert sched_b.get_last_lr() == ref[4]
    got = []
    for _ in range(5):
        opt_b.step()
        sched_b.step()
        got.append(sched_b.get_last_lr())
    assert got == ref[5:]
    if name == "onecycle":
        assert opt_b.param_groups[0]["momentum"] == opt_a.param_groups[0]["momentum"]


def _resume_setup(seed=0):
    X, y = load_digits("train")
    X, y = X[:192], y[:192]
    model = _model(seed, dropout=0.3)  # dropout draws from the global generator: it must be restored too
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = lrs.OneCycleLR(opt, max_lr=0.02, epochs=4, steps_per_epoch=6)
    loader = DataLoader(X, y, batch_size=32, shuffle=True, seed=5)
    return model, opt, sched, loader, (X[:64], y[:64])


def test_run_stopped_after_epoch_k_and_resumed_matches_the_uninterrupted_run(tmp_path):
    model, opt, sched, loader, val = _resume_setup()
    full = fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=4, scheduler=sched, progress=False)
    expect = model.state_dict()

    model, opt, sched, loader, val = _resume_setup()
    ck = ModelCheckpoint(tmp_path / "ck.safetensors", save_best_only=False)
    fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=4, scheduler=sched, progress=False,
        callbacks=[ck, lambda epoch, logs: epoch == 2])  # "interrupted" after epoch 2
    mc.manual_seed(99)  # whatever happened in between

    model, opt, sched, loader, val = _resume_setup(seed=7)  # fresh objects, other initial weights
    state = load_checkpoint(tmp_path / "ck.safetensors", model, opt, sched, loader)
    assert state["epoch"] == 2
    hist = fit(model, nn.CrossEntropyLoss(), opt, loader, val, epochs=4, scheduler=sched, progress=False,
               initial_epoch=state["epoch"], history=state["history"])
    for k, v in expect.items():
        if not k.endswith("num_batches_tracked"):  # Module.load_state_dict leaves the counter alone
            np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    assert hist.epochs == 4
    for k in full:
        np.testing.assert_array_equal(hist[k], full[k], err_msg=k)


def test_resume_without_the_loader_state_would_differ(tmp_path):
    """The control: the loader's generator state is what makes the resumed shuffles equal."""
    model, opt, sched, loader, val = _resume_setup()
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=4, scheduler=sched, progress=False)
    expect = model.state_dict()
    model, opt, sched, loader, val = _resume_setup()
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=2, scheduler=sched, progress=False)
    save_checkpoint(tmp_path / "ck.safetensors", model, opt, sched, loader=None, epoch=2)
    model, opt, sched, loader, val = _resume_setup()
    load_checkpoint(tmp_path / "ck.safetensors", model, opt, sched)
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=4, scheduler=sched, progress=False, initial_epoch=2)
    assert not all(np.array_equal(model.state_dict()[k], v) for k, v in expect.items())


def test_checkpoint_errors(tmp_path):
    model = _model()
    mc.save(model, tmp_path / "w.safetensors")
    with pytest.raises(mc.errors.MinicnnError, match="not a minicnn checkpoint"):
        load_checkpoint(tmp_path / "w.safetensors", model)
    save_checkpoint(tmp_path / "c.safetensors", model, epoch=1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(mc.errors.MinicnnError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "c.safetensors", model, opt)
    unseeded = DataLoader(np.zeros((4, 1)), np.zeros(4), shuffle=True)
    with pytest.raises(ValueError, match="this loader has no seed"):
        unseeded.load_state_dict(DataLoader(np.zeros((4, 1)), np.zeros(4), seed=1).state_dict())


def test_a_header_length_that_looks_like_a_pickle_is_still_safetensors(tmp_path):
    """A header of 0x380 bytes starts the file with 80 03, a pickle's protocol-3 opening."""
    path = tmp_path / "w.safetensors"
    for pad in range(1000):
        mc.save({"w": np.arange(3, dtype=np.float32)}, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x03":
            break
    else:
        pytest.fail("no padding gave a header length of 0x380")
    np.testing.assert_array_equal(mc.load(path)["w"], np.arange(3, dtype=np.float32))
