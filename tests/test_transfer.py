"""Transfer-learning helpers: freezing keeps weights bit-identical through real training steps,
head replacement keeps the layer order, layer groups and discriminative learning rates, and the
one-cycle rates ``fine_tune`` applies (against the closed form and against PyTorch)."""
import math

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, optim, transfer
from minicnn.data import load_digits
from minicnn.models.convnet import digits_convnet
from minicnn.train import fit


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits("train")
    return X[:256], y[:256]


def _snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# -- freezing ----------------------------------------------------------------------------------------

def test_frozen_weights_stay_bit_identical_through_training(digits):
    X, y = digits
    model = digits_convnet()
    transfer.freeze([model[0], model[3]])  # both conv layers
    before = _snapshot(model)
    # AdamW's weight decay would move every parameter it touched, even with a zero gradient
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=2, batch_size=64, progress=False)
    after = model.state_dict()
    for k in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert np.array_equal(after[k], before[k]), k
    for k in ("7.weight", "10.weight", "10.bias"):
        assert not np.array_equal(after[k], before[k]), k
    assert model[0].weight.grad is None and model[0].weight.requires_grad is False
    transfer.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_accepts_modules_params_and_named_pairs():
    model = digits_convnet()
    transfer.freeze(model[0].weight)
    transfer.freeze(model[3].named_parameters())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {"0.weight": False, "0.bias": True, "3.weight": False, "3.bias": False,
                     "7.weight": True, "7.bias": True, "10.weight": True, "10.bias": True}
    with pytest.raises(TypeError, match="got str"):
        transfer.freeze("0.weight")


def test_freeze_with_train_bn_keeps_batchnorm_trainable():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    transfer.freeze(model, train_bn=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight", "1.bias"]
    transfer.freeze_to(model, -1)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["4.weight", "4.bias"]


# -- the head ---------------------------------------------------------------------------------------

def test_replace_head_in_a_sequential_keeps_the_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 7), nn.Sigmoid())
    head = transfer.replace_head(model, 3)
    assert [type(m).__name__ for m in model] == ["Conv2d", "Flatten", "Linear", "Sigmoid"]
    assert model[2] is head and head.weight.shape == (3, 18)
    assert model(np.zeros((2, 1, 5, 5), np.float32)).shape == (2, 3)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_replace_head_of_resnet18():
    from minicnn.models.resnet import resnet18, seeded_state_dict

    model = resnet18(weights=seeded_state_dict("resnet18", 0))
    head = transfer.replace_head(model, 5)
    assert model.fc is head and model.num_classes == 5 and head.weight.shape == (5, 512)
    assert list(model.state_dict())[-2:] == ["fc.weight", "fc.bias"]
    model.eval()
    assert model(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 5)
    groups = transfer.layer_groups(model)
    assert [g[0][0] for g in groups] == ["conv1.weight", "layer3.0.conv1.weight", "fc.weight"]
    assert groups[0][-1][0].startswith("layer2.") and groups[1][-1][0].startswith("layer4.")
    custom = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 2))
    transfer.replace_head(model, head=custom)
    assert model.fc is custom


def test_find_head_requires_a_linear():
    with pytest.raises(ValueError, match="has no Linear layer"):
        transfer.find_head(nn.Sequential(nn.Conv2d(1, 1, 1)))


# -- layer groups and learning rates --------------------------------------------------------------

def test_lr_range_closed_forms():
    np.testing.assert_allclose(transfer.lr_range(slice(1e-5, 1e-3), 3), [1e-5, 1e-4, 1e-3])
    np.testing.assert_allclose(transfer.lr_range(slice(1e-6, 1e-3), 4), [1e-6, 1e-5, 1e-4, 1e-3])
    assert transfer.lr_range(slice(None, 0.1), 3) == [0.01, 0.01, 0.1]
    assert transfer.lr_range(0.5, 2) == [0.5, 0.5]
    assert transfer.lr_range([1, 2, 3], 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="2 learning rates for 3 layer groups"):
        transfer.lr_range([1, 2], 3)


def test_param_groups_feed_an_optimizer():
    model = digits_convnet()
    groups = transfer.param_groups(model, ["3", "10"], slice(1e-4, 1e-2))
    assert [g["name"] for g in groups] == ["0", "3..7", "10"]
    np.testing.assert_allclose([g["lr"] for g in groups], [1e-4, 1e-3, 1e-2])
    opt = optim.SGD(groups, lr=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4, 2]
    with pytest.raises(ValueError, match="split 'nope' names no parameter"):
        transfer.layer_groups(model, ["nope"])
    with pytest.raises(ValueError, match="forward order"):
        transfer.layer_groups(model, ["10", "3"])


# -- fine_tune -------------------------------------------------------------------------------------

def _one_cycle_closed_form(max_lr, total, pct_start, div, final_div):
    """PyTorch's two-phase cosine one-cycle, written from its definition."""
    lo, hi = max_lr / div, max_lr
    end = lo / final_div
    up = pct_start * total - 1
    out = []
    for t in range(total):
        if t <= up:
            pct = t / up if up > 0 else 0.0
            out.append(hi + (lo - hi) / 2 * (math.cos(math.pi * pct) + 1))
        else:
            pct = (t - up) / (total - 1 - up)
            out.append(end + (hi - end) / 2 * (math.cos(math.pi * pct) + 1))
    return out


def test_fine_tune_freezes_the_body_for_the_head_phase(digits):
    X, y = digits
    mc.manual_seed(0)
    model = digits_convnet()
    before = _snapshot(model)
    res = transfer.fine_tune(model, nn.CrossEntropyLoss(), (X, y), epochs_head=1, epochs_all=0, base_lr=1e-2,
                             batch_size=64, seed=0)
    after = model.state_dict()
    for k in ("0.weight", "3.bias", "7.weight"):
        assert np.array_equal(after[k], before[k]), k
    assert not np.array_equal(after["10.weight"], before["10.weight"])
    assert res.all == {} and len(res.head["loss"]) == 1
    assert all(p.requires_grad for p in model.parameters())  # left unfrozen


def test_fine_tune_one_cycle_rates_follow_the_closed_form(digits):
    X, y = digits
    model = digits_convnet()
    res = transfer.fine_tune(model, nn.CrossEntropyLoss(), (X, y), epochs_head=1, epochs_all=2, base_lr=2e-3,
                             lr_mult=100, batch_size=64, seed=0)
    steps = math.ceil(len(X) / 64)
    assert len(res.lrs_head) == steps and len(res.lrs_all) == 2 * steps
    # head phase: peak slice(2e-3) -> [2e-4, 2e-3], warm-up over 99%, div 25, ends at peak / 1e5
    for g, peak in enumerate([2e-4, 2e-3]):
        ref = _one_cycle_closed_form(peak, steps, 0.99, 25.0, 1e5 / 25.0)
        np.testing.assert_allclose([lr[g] for lr in res.lrs_head], ref, rtol=1e-12)
    # full phase: base_lr halved, discriminative peaks 1e-5 .. 1e-3, pct_start 0.3, div 5
    for g, peak in enumerate([1e-5, 1e-3]):
        ref = _one_cycle_closed_form(peak, 2 * steps, 0.3, 5.0, 1e5 / 5.0)
        np.testing.assert_allclose([lr[g] for lr in res.lrs_all], ref, rtol=1e-12)
    assert len(res.history["loss"]) == 3 and len(res.history["lr"]) == 3


@pytest.mark.torch
def test_fine_tune_one_cycle_rates_match_torch(digits):
    torch = pytest.importorskip("torch")
    X, y = digits
    model = digits_convnet()
    res = transfer.fine_tune(model, nn.CrossEntropyLoss(), (X, y), epochs_head=0, epochs_all=3, base_lr=4e-3,
                             lr_mult=10, batch_size=64, seed=0)
    total = 3 * math.ceil(len(X) / 64)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]]}], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[2e-4, 2e-3], total_steps=total, pct_start=0.3,
                                                div_factor=5.0, final_div_factor=1e5 / 5.0)
    ref = []
    for _ in range(total):
        ref.append(sched.get_last_lr())
        opt.step()
        sched.step()
    np.testing.assert_allclose(res.lrs_all, ref, rtol=1e-12)


def test_fine_tune_transfers_digits_0_4_to_5_9():
    """Conv layers pretrained on digits 0-4 under a fresh dense head, fine-tuned on 5-9: well above
    chance (0.2) after a few epochs, and better at the end than after the head-only phase."""
    X, y, Xt, yt = load_digits("both")
    lo, lot = y < 5, yt < 5
    mc.manual_seed(0)
    pre = digits_convnet(num_classes=5)
    fit(pre, nn.CrossEntropyLoss(), optim.Adam(pre.parameters(), lr=3e-3), (X[lo], y[lo]), epochs=4, progress=False)
    model = digits_convnet(num_classes=5)
    model.load_state_dict({k: v for k, v in pre.state_dict().items() if k[0] in "03"}, strict=False)
    res = transfer.fine_tune(model, nn.CrossEntropyLoss(), (X[~lo], y[~lo] - 5), (Xt[~lot], yt[~lot] - 5),
                             splits=["7"], epochs_head=2, epochs_all=3, base_lr=1e-2, lr_mult=10, seed=0)
    acc = res.history["val_accuracy"]
    assert acc[-1] > 0.85 and acc[-1] > acc[1], acc
