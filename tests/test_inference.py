"""The inference fast path: BatchNorm folding and the compiled ResNet forward.

Each check compares against the normal model in eval mode on the numpy reference backend, with the
deterministic seeded ResNet weights (non-trivial batchnorm statistics, so a swapped mean/var or a
forgotten beta shows), on small inputs to stay fast.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicnn as mc
from minicnn import backends, inference, nn
from minicnn.models.resnet import BasicBlock, resnet18, seeded_state_dict


def _rel(a, b):
    a = np.asarray(mc.to_numpy(a), np.float64)
    b = np.asarray(mc.to_numpy(b), np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def seeded_resnet():
    return resnet18(weights=seeded_state_dict("resnet18", seed=3)).eval()


@pytest.fixture(scope="module")
def x_small():
    return np.random.default_rng(7).standard_normal((2, 3, 48, 40)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_outputs(seeded_resnet, x_small):
    with mc.backend("numpy"), mc.no_grad():
        return {
            "logits": seeded_resnet(x_small),
            "features": seeded_resnet.forward_features(x_small),
            "embed": seeded_resnet.embed(x_small),
        }


def _randomize_bn(model, seed):
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            if m.affine:
                m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
                m.bias.data = rng.normal(0, 0.3, c).astype(np.float32)
            if m.track_running_stats:
                m._set_buffer("running_mean", rng.normal(0, 0.3, c).astype(np.float32))
                m._set_buffer("running_var", rng.uniform(0.3, 2.0, c).astype(np.float32))
    return model


# -- fold_conv_bn: the formula -------------------------------------------------------------------


@given(k=st.integers(1, 6), c=st.integers(1, 4), r=st.sampled_from([1, 3]), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       bias=st.booleans(), affine=st.booleans(), seed=st.integers(0, 10_000))
def test_fold_conv_bn_matches_formula(k, c, r, eps, bias, affine, seed):
    mc.manual_seed(seed)
    conv = nn.Conv2d(c, k, r, bias=bias)
    bn = _randomize_bn(nn.BatchNorm2d(k, eps=eps, affine=affine), seed)
    w, b = inference.fold_conv_bn(conv, bn)
    gamma = bn.weight.data.astype(np.float64) if affine else np.ones(k)
    beta = bn.bias.data.astype(np.float64) if affine else np.zeros(k)
    scale = gamma / np.sqrt(bn.running_var.astype(np.float64) + eps)
    b0 = conv.bias.data.astype(np.float64) if bias else np.zeros(k)
    np.testing.assert_allclose(w, conv.weight.data * scale[:, None, None, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b, beta + (b0 - bn.running_mean) * scale, rtol=1e-6, atol=1e-7)
    assert w.dtype == np.float32 and b.dtype == np.float32
    # and the folded conv computes what conv then batchnorm compute
    x = np.random.default_rng(seed).standard_normal((2, c, 5, 5)).astype(np.float32)
    bn.eval()
    with mc.backend("numpy"), mc.no_grad():
        ref = bn(conv(x))
        got = mc.ops.conv2d_forward(x, w, b, (1, 1), (0, 0), (1, 1), 1)
    assert _rel(got, ref) < 1e-5


def test_fold_conv_bn_rejects_mismatched_or_statless_pairs():
    with pytest.raises(ValueError, match=r"4 output channels.*normalises 5"):
        inference.fold_conv_bn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        inference.fold_conv_bn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))


# -- fold_batchnorm: whole models -----------------------------------------------------------------


def test_fold_batchnorm_resnet_equals_eval_output(seeded_resnet, x_small, reference_outputs):
    before = seeded_resnet.state_dict()
    folded = inference.fold_batchnorm(seeded_resnet)
    # every batchnorm of the ResNet sits right after a conv, so none is left
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.Conv2d) and m.bias is not None for m in folded.modules()) == 20
    assert folded.training is False
    with mc.backend("numpy"), mc.no_grad():
        got = folded(x_small)
    assert _rel(got, reference_outputs["logits"]) < 1e-5
    # the original is untouched: same arrays, still has its batchnorms
    after = seeded_resnet.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert isinstance(seeded_resnet.layer1[0].bn1, nn.BatchNorm2d)


def test_fold_batchnorm_sequential_pairs_only():
    mc.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),                       # conv with bias -> bn: folded
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, bias=False),           # conv -> non-affine bn: folded
        nn.BatchNorm2d(6, affine=False),
        nn.ReLU(),
        nn.BatchNorm2d(6),                                   # bn after relu: no conv before it, kept
        nn.Conv2d(6, 4, 1),                                  # conv -> bn without running stats: kept
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.Flatten(),
    )
    _randomize_bn(model, 5)
    model.eval()
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    with mc.backend("numpy"), mc.no_grad():
        ref = model(x)
        folded = inference.fold_batchnorm(model)
        got = folded(x)
    kinds = [type(m).__name__ for m in folded]
    assert kinds == ["Conv2d", "Identity", "ReLU", "Conv2d", "Identity", "ReLU", "BatchNorm2d", "Conv2d",
                     "BatchNorm2d", "Flatten"]
    assert folded[3].bias is not None
    assert _rel(got, ref) < 1e-5


def test_fold_batchnorm_does_not_copy_forward_caches(seeded_resnet, x_small):
    model = resnet18(weights=seeded_state_dict("resnet18", seed=3)).eval()
    with mc.backend("numpy"):
        model(x_small[:1])  # grad mode on: every layer now caches its input
    assert model.conv1._has_saved()
    folded = inference.fold_batchnorm(model)
    assert not any(m._has_saved() for m in folded.modules())
    assert model.conv1._has_saved()  # the original keeps its caches


def test_fold_batchnorm_rejects_non_modules():
    with pytest.raises(TypeError, match="minicnn Module"):
        inference.fold_batchnorm(lambda x: x)


# -- compile_inference ----------------------------------------------------------------------------


def test_compiled_resnet_equals_eval_model_on_numpy(seeded_resnet, x_small, reference_outputs):
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numpy"):
        logits = fast(x_small)
        feats = fast.forward_features(x_small)
        emb = fast.embed(x_small)
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert _rel(logits, reference_outputs["logits"]) < 1e-5
    assert _rel(feats, reference_outputs["features"]) < 1e-5
    assert _rel(emb, reference_outputs["embed"]) < 1e-5
    # the top-5 classes agree, which is what a user of the fast path looks at
    ref_top = np.argsort(-reference_outputs["logits"], axis=1)[:, :5]
    assert np.array_equal(np.argsort(-logits, axis=1)[:, :5], ref_top)
    # 1 stem conv, 2 per block, 3 downsample convs
    assert "20 fused convs" in repr(fast)


def test_compiled_resnet_on_every_backend_matches_numpy_reference(backend_name, seeded_resnet, x_small,
                                                                 reference_outputs):
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend(backend_name):
        logits = mc.to_numpy(fast(x_small))
        again = mc.to_numpy(fast(x_small))  # second call on the same shape reuses whatever was kept
    assert _rel(logits, reference_outputs["logits"]) < 1e-4
    np.testing.assert_array_equal(logits, again)


@pytest.mark.parametrize("channels_last", [None, False])
def test_autotune_picks_a_supported_variant_per_conv_and_keeps_the_numbers(seeded_resnet, x_small, reference_outputs,
                                                                           channels_last):
    pytest.importorskip("numba")
    from minicnn.backends.numba import channels_last as ncl
    from minicnn.backends.numba import conv as nconv

    fast = inference.compile_inference(seeded_resnet, channels_last=channels_last)
    fixed = inference.compile_inference(seeded_resnet, autotune=False, channels_last=channels_last)
    with mc.backend("numba"):
        tuned_logits = fast(x_small)
        fixed_logits = fixed(x_small)
        picks = fast.variants()
        # a new batch size is a new shape: tuned again, and the earlier picks stay
        fast(x_small[:1])
    assert fixed.variants() == {}
    assert _rel(tuned_logits, reference_outputs["logits"]) < 1e-4
    assert _rel(fixed_logits, reference_outputs["logits"]) < 1e-4
    convs = {c.name: c for c in fast.convs()}
    if channels_last is None:  # numba runs channels-last: the stem conv is tuned too (its max pool is an op)
        assert len(picks) == len(convs)
    else:  # NCHW: every conv but the stem, which runs fused with the max pool
        assert len(picks) == len(convs) - 1
    for name, chosen in picks.items():
        (key, variant), = chosen.items()
        shape = key[0]
        assert key[-1] == ("cl" if channels_last is None else "nchw")
        c = convs[name]
        w_shape = (c.out_channels, c.in_channels, *c._host[0].shape[2:])
        if channels_last is None:
            assert variant == "op" or variant in ncl.conv_variants_cl(shape, w_shape, c.stride, c.padding,
                                                                      c.dilation, c.groups)
        else:
            assert variant == "op" or nconv.supports(variant, shape, w_shape, c.stride, c.padding, c.dilation,
                                                     c.groups)
    assert all(len(v) == 2 for v in fast.variants().values())


def test_autotune_keeps_only_the_picked_filter_transforms(seeded_resnet, x_small):
    pytest.importorskip("numba")
    from minicnn.backends.numba import _filters

    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numba"):
        fast(x_small)
    for c in fast.convs():
        w = c.arrays(backends.load("numba"))[0]
        picked = {name for name, _ in c.chosen.values()}
        entry = _filters._table.get(id(w))
        tiles = sorted(k[1] for k in (entry[1] if entry and entry[0]() is w else {}) if k[0] == "winograd")
        assert tiles == sorted(int(n[len("winograd_f")]) for n in picked if n.startswith("winograd")), (c.name, picked)


def test_autotune_drops_a_variant_that_computes_wrong_numbers(monkeypatch, seeded_resnet, x_small, reference_outputs):
    pytest.importorskip("numba")
    import minicnn.backends.numba as nbk

    real = nbk.conv_variants

    def with_a_broken_one(*shape_args):
        cands = dict(real(*shape_args))

        def broken(*args, **kwargs):
            y = cands["im2col_gemm"](*args, **kwargs)
            y += 1.0
            return y

        return {"broken": broken, **cands}

    monkeypatch.setattr(nbk, "conv_variants", with_a_broken_one)
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numba"):
        logits = fast(x_small)
    assert _rel(logits, reference_outputs["logits"]) < 1e-4
    assert all(v != "broken" for picks in fast.variants().values() for v in picks.values())


def test_compiled_resnet_converts_input_dtype_and_checks_shape(seeded_resnet, x_small, reference_outputs):
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numpy"):
        got = fast(x_small.astype(np.float64))
        assert got.dtype == np.float32
        assert _rel(got, reference_outputs["logits"]) < 1e-5
        with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got shape \(2, 4, 8, 8\)"):
            fast(np.zeros((2, 4, 8, 8), np.float32))
        with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
            fast(np.zeros((3, 8, 8), np.float32))
        with pytest.raises(TypeError, match="complex"):
            fast(np.zeros((1, 3, 8, 8), np.complex64))


def test_compiled_resnet_in_float64(x_small):
    model = resnet18(weights=seeded_state_dict("resnet18", seed=4)).eval().to(np.float64)
    fast = inference.compile_inference(model)
    with mc.backend("numpy"), mc.no_grad():
        ref = model(x_small)
        got = fast(x_small)
    assert got.dtype == np.float64
    assert _rel(got, ref) < 1e-12


def test_compiled_snapshot_is_independent_of_later_weight_changes(x_small):
    model = resnet18(weights=seeded_state_dict("resnet18", seed=5)).eval()
    fast = inference.compile_inference(model)
    with mc.backend("numpy"), mc.no_grad():
        ref = model(x_small[:1])
        model.load_state_dict(seeded_state_dict("resnet18", seed=6))
        assert _rel(fast(x_small[:1]), ref) < 1e-5
        assert _rel(inference.compile_inference(model)(x_small[:1]), model(x_small[:1])) < 1e-5


def test_compile_inference_rejects_other_models():
    with pytest.raises(ValueError, match="not a BasicBlock ResNet.*fold_batchnorm"):
        inference.compile_inference(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_compiled_head_variants(seeded_resnet, x_small, reference_outputs):
    """A ResNet whose fc was replaced (Identity for features, a small Sequential head) still compiles."""
    model = resnet18(weights=seeded_state_dict("resnet18", seed=3)).eval()
    model.fc = nn.Identity()
    with mc.backend("numpy"):
        emb = inference.compile_inference(model)(x_small)
    assert _rel(emb, reference_outputs["embed"]) < 1e-5
    mc.manual_seed(0)
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 3))
    with mc.backend("numpy"), mc.no_grad():
        ref = model(x_small)
        got = inference.compile_inference(model)(x_small)
    assert _rel(got, ref) < 1e-5


def test_buffers_are_reused_and_never_alias_a_live_input(monkeypatch, seeded_resnet, x_small, reference_outputs):
    """With a fused kernel that writes into ``out=``, the compiled model keeps one set of buffers per
    input shape: the second call allocates nothing new, and no conv ever writes over its own input
    or the residual it adds."""
    be = backends.load("numpy")
    plain = be.OPS["conv2d_fused_forward"]
    seen = []

    def fused_with_out(x, w, b, stride, padding, dilation, groups, residual=None, relu=False, out=None):
        if out is None:  # the stem inside the default conv2d_maxpool_fused, whose pool output is the buffer
            assert residual is None and relu
            return plain(x, w, b, stride, padding, dilation, groups, residual, relu)
        assert out is not x and out is not residual
        assert not np.shares_memory(out, x) and (residual is None or not np.shares_memory(out, residual))
        np.copyto(out, plain(x, w, b, stride, padding, dilation, groups, residual, relu))
        seen.append(out)
        return out

    monkeypatch.setitem(be.OPS, "conv2d_fused_forward", fused_with_out)
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numpy"):
        first = fast(x_small)
        ids_first = [id(a) for a in seen]
        held = fast.buffer_bytes()
        seen.clear()
        second = fast(x_small)
        ids_second = [id(a) for a in seen]
        seen.clear()
        third = fast(x_small)
        ids_third = [id(a) for a in seen]
        feats = fast.forward_features(x_small)
    # 19 of the 20 convs write into a buffer; the stem conv runs inside the (default)
    # conv2d_maxpool_fused, whose pooled output is the buffer
    assert len(ids_first) == len(ids_second) == 19
    assert set(ids_second) == set(ids_first)  # no new buffers on the second call
    assert ids_third == ids_second  # and from then on the very same sequence
    assert fast.buffer_bytes() == held > 0
    # liveness-based reuse: three per stage (block input, inner activation, output; the
    # downsample branch reuses a freed one), not one per conv (the stem's pooled output is a
    # buffer the convs never see here)
    assert len(set(ids_first)) == 3 * 4
    assert _rel(first, reference_outputs["logits"]) < 1e-5
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)
    # the returned feature map is the caller's own, not a buffer the next call overwrites
    assert not any(np.shares_memory(feats, a) for a in seen)
    assert _rel(feats, reference_outputs["features"]) < 1e-5
    # a new input shape gets its own buffers
    fast(x_small[:1])
    assert fast.buffer_bytes() > held


@pytest.mark.torch
def test_compiled_resnet_matches_pytorch(seeded_resnet, x_small):
    torch = pytest.importorskip("torch")
    from torch_resnet import build

    ref_model = build("resnet18", state_dict=seeded_state_dict("resnet18", seed=3)).eval()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x_small)).numpy()
    fast = inference.compile_inference(seeded_resnet)
    with mc.backend("numpy"):
        got = fast(x_small)
    assert _rel(got, ref) < 1e-4


def test_basic_block_type_is_the_one_compiled(seeded_resnet):
    """The compiled path recognises the library's BasicBlock (a guard against the model drifting)."""
    assert all(inference._is_basic_block(b) for b in seeded_resnet.layer2)
    assert isinstance(seeded_resnet.layer2[0], BasicBlock)


def test_autotune_retunes_when_the_backend_tuning_key_changes_and_times_to_the_end(seeded_resnet, x_small,
                                                                                   reference_outputs):
    """A pick is keyed by the backend's ``tuning_key()`` (cupy: the precision mode), so a mode that
    offers other variants is tuned afresh; and each timed run is bracketed by ``synchronize()``."""
    import types

    ref = backends.load("numpy")
    mode = {"now": "m1"}
    synced = []

    def conv_variants(x_shape, w_shape, stride, padding, dilation, groups):
        fused = ref.OPS["conv2d_fused_forward"]
        return {f"{mode['now']}_a": fused, f"{mode['now']}_b": fused}

    table = {k: v for k, v in ref.module.OPS.items()}
    table.update(conv_variants=conv_variants, tuning_key=lambda: (mode["now"],),
                 synchronize=lambda: synced.append(1))
    backends.register("tuned", types.SimpleNamespace(NAME="tuned", OPS=table))
    try:
        fast = inference.compile_inference(seeded_resnet)
        with mc.backend("tuned"):
            first = fast(x_small)
            assert synced, "the autotuner never waited for the backend"
            mode["now"] = "m2"
            second = fast(x_small)
    finally:
        backends.unregister("tuned")
    assert _rel(first, reference_outputs["logits"]) < 1e-4
    np.testing.assert_array_equal(first, second)
    for name, picks in fast.variants().items():
        modes = sorted(key[4] for key in picks)
        assert modes == [("m1",), ("m2",)], (name, picks)
        assert {v[:2] for v in picks.values()} == {"m1", "m2"}, (name, picks)
