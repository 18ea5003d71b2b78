"""The inference fast path: BatchNorm folding and a compiled ResNet forward.

In eval mode a BatchNorm2d is an affine map per channel with fixed statistics, so a Conv2d followed
by one is a single convolution with a rescaled weight and a new bias::

    scale = gamma / sqrt(running_var + eps)
    w'    = w * scale[k]                      (per output channel k)
    b'    = beta + (b - running_mean) * scale (b = 0 when the conv has no bias)

``fold_batchnorm(model)`` returns a copy of ``model`` with every such pair merged (the BatchNorm
becomes ``nn.Identity``). ``compile_inference(model)`` goes further for ResNets: every BasicBlock
becomes two or three calls of ``ops.conv2d_fused_forward``, whose epilogue adds the folded bias,
the residual and applies the ReLU while the output tile is still hot, instead of the five to
seven full passes over the activations that conv, bn, relu, conv, bn, add, relu make. A VGG
compiles the same way: each conv (+ bn) + relu is one fused call, and one that a 2x2 max pool
follows runs with the pool fused in (``conv2d_maxpool_fused``)::

    fast = mc.inference.compile_inference(resnet18().eval())
    logits = fast(x)                    # same numbers as model(x) in eval mode, to float32 rounding
    fmap = fast.forward_features(x)     # what model.forward_features(x) returns (layer4's map)
    emb = fast.embed(x)                 # what model.embed(x) returns (N, 512)
    g = fast.capture(x)                 # a GPU backend: the forward for x's shape as one device graph

The compiled object snapshots the weights when it is built: compile again after loading new ones.
Any backend works: everything it uses is in the backend's table (``minicnn.ops``): the fused op,
which writes into ``out=`` buffers kept per input shape (so a steady stream of same-sized batches
allocates nothing big) made by the backend's ``empty``, and the optional ``conv_variants``,
``release_unpicked``, ``threads`` and ``conv2d_maxpool_fused`` entries, whose defaults make the
autotuner keep the op and the stem run as conv then pool.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
from contextlib import contextmanager

import numpy as np

from . import backends, ops
from .grad_mode import no_grad
from .nn.activation import Identity, ReLU
from .nn.batchnorm import BatchNorm2d
from .nn.conv import Conv2d
from .nn.dropout import Dropout
from .nn.linear import Linear
from .nn.module import Module, Parameter, Sequential
from .nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from .shapes import conv_output_size

__all__ = ["fold_conv_bn", "fold_batchnorm", "compile_inference", "CompiledModel", "CompiledVGG", "CapturedModel"]


def fold_conv_bn(conv: Conv2d, bn: BatchNorm2d):
    """The (weight, bias) of one convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    Computed in float64 and returned as numpy arrays in the conv's dtype. Raises ValueError when
    the pair cannot be merged (channel counts differ, or the BatchNorm keeps no running statistics
    and therefore normalises with batch statistics even in eval mode).
    """
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"cannot fold {bn._short()} into {conv._short()}: conv has {conv.out_channels} output channels, "
            f"batchnorm normalises {bn.num_features}"
        )
    if not bn.track_running_stats:
        raise ValueError(f"cannot fold {bn._short()}: it keeps no running statistics (track_running_stats=False)")
    to64 = lambda a: np.asarray(backends.to_numpy(a), dtype=np.float64)  # noqa: E731
    if bn.affine:
        gamma, beta = to64(bn.weight.data), to64(bn.bias.data)
    else:
        gamma, beta = np.ones(bn.num_features), np.zeros(bn.num_features)
    scale = gamma / np.sqrt(to64(bn.running_var) + bn.eps)
    w = to64(conv.weight.data)
    b = to64(conv.bias.data) if conv.bias is not None else np.zeros(conv.out_channels)
    w_f = w * scale.reshape(-1, 1, 1, 1)
    b_f = beta + (b - to64(bn.running_mean)) * scale
    dtype = np.dtype(conv.dtype)
    return w_f.astype(dtype), b_f.astype(dtype)


def _bn_partner(conv_name: str) -> str | None:
    """torchvision's naming: ``conv1`` is normalised by ``bn1``, ``conv`` by ``bn``."""
    return "bn" + conv_name[4:] if conv_name.startswith("conv") else None


def conv_bn_pairs(model: Module):
    """Yield ``(parent, conv_name, bn_name)`` for every Conv2d whose output feeds a BatchNorm2d.

    The rule is structural: inside a Sequential, a Conv2d immediately followed by a BatchNorm2d;
    inside any other module, children named ``conv<suffix>`` and ``bn<suffix>`` (torchvision's
    ResNet convention, which our models follow). Pairs whose channel counts differ or whose
    BatchNorm keeps no running statistics are left alone.
    """
    for _, parent in model.named_modules():
        kids = list(parent._modules.items())
        if isinstance(parent, Sequential):
            candidates = [(n1, n2) for (n1, _), (n2, _) in zip(kids, kids[1:])]
        else:
            candidates = [(n, _bn_partner(n)) for n, _ in kids if _bn_partner(n) in parent._modules]
        for conv_name, bn_name in candidates:
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if (isinstance(conv, Conv2d) and isinstance(bn, BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                yield parent, conv_name, bn_name


def _copy_without_caches(model: Module) -> Module:
    """deepcopy, minus whatever arrays the last forward pass left for backward."""
    memo = {}
    for m in model.modules():
        stack = m.__dict__.get("_saved_stack")
        if stack:
            memo[id(stack)] = []
    return copy.deepcopy(model, memo)


def fold_batchnorm(model: Module) -> Module:
    """A copy of ``model``, in eval mode, with every Conv2d -> BatchNorm2d pair merged into one Conv2d.

    The conv takes the folded weight and bias (it gains a bias if it had none) and the BatchNorm is
    replaced by ``nn.Identity``, so the copy's eval output equals the original's to float32 rounding
    while doing one pass over each activation instead of two. ``model`` itself is not modified.
    Which pairs count is described in ``conv_bn_pairs``. The copy is an inference model: training it
    would train without normalisation.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fold_batchnorm takes a minicnn Module, got {type(model).__name__}")
    folded = _copy_without_caches(model)
    for parent, conv_name, bn_name in list(conv_bn_pairs(folded)):
        conv, bn = parent._modules[conv_name], parent._modules[bn_name]
        w, b = fold_conv_bn(conv, bn)
        conv.weight.data = w
        conv.bias = Parameter(b)
        ident = Identity()
        object.__setattr__(ident, "dtype", conv.dtype)
        # in place, not setattr: a Sequential runs its children in insertion order
        parent._modules[bn_name] = ident
        object.__setattr__(parent, bn_name, ident)
    return folded.eval()


# -- the compiled forward -------------------------------------------------------------------------


class _BufferPool:
    """Output arrays kept across calls, keyed by (shape, dtype, backend); a call borrows and returns them.

    Within one forward pass a borrowed buffer is never handed out twice until it is given back,
    so a residual input can never be overwritten by the conv that adds it.
    """

    def __init__(self):
        self._free: dict = {}
        self._all: dict = {}

    def take(self, shape, dtype, be):
        key = (tuple(shape), np.dtype(dtype).str, be.NAME)
        free = self._free.setdefault(key, [])
        if free:
            return free.pop()
        buf = be.empty(shape, dtype)
        self._all.setdefault(key, []).append(buf)
        return buf

    def give(self, buf, be):
        if buf is None:
            return
        key = (tuple(buf.shape), np.dtype(buf.dtype).str, be.NAME)
        if any(b is buf for b in self._all.get(key, ())):
            self._free.setdefault(key, []).append(buf)

    def reset(self):
        """Every buffer free again (the start of a new forward pass)."""
        self._free = {k: list(v) for k, v in self._all.items()}

    def nbytes(self) -> int:
        """Bytes held across calls."""
        return sum(int(b.nbytes) for bufs in self._all.values() for b in bufs)


class _FusedConv:
    """One conv with folded bias and optional residual + ReLU epilogue (``ops.conv2d_fused_forward``)."""

    def __init__(self, conv: Conv2d, bn: BatchNorm2d | None, relu: bool, name: str):
        if conv._pads is not None:  # padding_mode other than zeros, or an odd padding='same'
            raise ValueError(
                f"compile_inference: {name} ({conv._short()}) pads with the pad op (padding_mode="
                f"{conv.padding_mode!r}, padding={conv.padding!r}); compiled models take zero-padded convs only"
            )
        if bn is not None:
            w, b = fold_conv_bn(conv, bn)
        else:
            w = np.array(backends.to_numpy(conv.weight.data), dtype=conv.dtype)
            b = None if conv.bias is None else np.array(backends.to_numpy(conv.bias.data), dtype=conv.dtype)
        self.name, self.relu = name, relu
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # read-only: the backend may then cache what it derives from them (Winograd transforms)
        w.flags.writeable = False
        if b is not None:
            b.flags.writeable = False
        self._host = (w, b)
        self._dev: dict = {}
        # (input shape, dtype, backend, threads, tuning_key, has residual) -> (variant name, function): the autotuner's picks
        self.chosen: dict = {}
        # one autotuning at a time per conv: threads that meet a new shape together wait for the
        # first one's pick instead of timing against each other and choosing differently
        self._tune_lock = threading.Lock()

    def arrays(self, be):
        """Weight and bias in the memory of backend ``be`` (converted once per backend)."""
        if be.NAME not in self._dev:
            w, b = self._host
            self._dev[be.NAME] = (be.asarray(w), None if b is None else be.asarray(b))
        return self._dev[be.NAME]

    def __call__(self, x, ctx, residual=None, epilogue=True):
        """The conv with its folded bias, the residual and ReLU; ``epilogue=False``: the bare
        conv (no bias, no ReLU), for a caller that applies them later (the channels-last stem)."""
        w, b = self.arrays(ctx.be)
        kwargs = {"out": ctx.pool.take(self._out_shape(x, w, ctx.cl), x.dtype, ctx.be)}
        relu = self.relu
        if not epilogue:
            b, relu = None, False
        args = (x, w, b, self.stride, self.padding, self.dilation, self.groups, residual, relu)
        fn = ctx.fused
        if ctx.tune:
            key = self.tune_key(x, ctx, residual is not None, epilogue)
            pick = self.chosen.get(key)
            if pick is None:
                with self._tune_lock:
                    pick = self.chosen.get(key)
                    if pick is None:
                        pick = self.chosen[key] = _autotune(ctx, args, kwargs)
                        # what the backend cached for the losers (numba: Winograd filter transforms) goes
                        ctx.be.release_unpicked(w, {name for name, _ in self.chosen.values()})
            fn = pick[1]
        return fn(*args, **kwargs)

    @staticmethod
    def tune_key(x, ctx, has_residual, epilogue=True):
        """The key of an autotuned pick in ``chosen``: what decides which variant wins."""
        return (tuple(x.shape), x.dtype.str, ctx.be.NAME, ctx.threads, ctx.be.tuning_key(), has_residual,
                *(() if epilogue else ("bare",)), "cl" if ctx.cl else "nchw")

    def _out_shape(self, x, w, cl=False):
        """y's shape: (N, K, P, Q), or (N, P, Q, K) for channels-last x (N, H, W, C)."""
        K, _, R, S = w.shape
        H, W = (x.shape[1], x.shape[2]) if cl else (x.shape[2], x.shape[3])
        P, Q = conv_output_size(H, W, R, S, self.stride, self.padding, self.dilation)
        return (x.shape[0], P, Q, K) if cl else (x.shape[0], K, P, Q)

    def pooled(self, x, ctx, fn, pool_args):
        """maxpool(relu(conv(x) + b)) through the backend's fused kernel ``fn``, into a pool buffer.
        Channels-last: the bare conv (autotuned like any other) into a pool buffer, then the
        backend's ``maxpool2d_forward_cl`` with the bias and ReLU, relu(maxpool(conv(x)) + b): the
        same numbers (a max commutes with adding a per-channel constant and with ReLU), with the
        epilogue on a quarter of the values."""
        pk, ps, pp, pd = ((a, a) if isinstance(a, int) else tuple(a) for a in pool_args)
        if ctx.cl:
            y = self(x, ctx, epilogue=False)
            N, P, Q, K = y.shape
            shape = (N, *conv_output_size(P, Q, pk[0], pk[1], ps, pp, pd), K)
            _, b = self.arrays(ctx.be)
            out = ctx.be.maxpool2d_forward_cl(y, pk, ps, pp, pd, out=ctx.pool.take(shape, x.dtype, ctx.be),
                                              bias=b, relu=self.relu)
            ctx.done_with(y)
            return out
        w, b = self.arrays(ctx.be)
        N, K, P, Q = self._out_shape(x, w)
        shape = (N, K, *conv_output_size(P, Q, pk[0], pk[1], ps, pp, pd))
        return fn(x, w, b, self.stride, self.padding, self.dilation, self.groups, self.relu, pk, ps, pp, pd,
                  out=ctx.pool.take(shape, x.dtype, ctx.be))


# A batch of at least this many images per thread runs as one slice per thread, each slice's whole
# forward on one thread (``CompiledModel._in_parts``). Measured on ResNet-18 with two threads
# (docs/kernels.md, "A batch split across threads"): slices of 4 to 16 images beat one two-thread
# pass; slices of 1 or 2 images did not.
BATCH_SPLIT_MIN_IMAGES = 4
# ... and joins again at this ResNet stage (``layer4``'s first block, numbered as the model's
# ``layerN``): the blocks from there on run once on the whole batch with every thread. layer4's
# convs read 2.4-9.4 MB of filters (37.7 MB as F(4x4) Winograd transforms) for 7x7 maps, so slice
# by slice each filter was read once per slice and the products were bound by reading them
# (docs/kernels.md, "A batch split across threads"). None: the slices run to the end.
BATCH_JOIN_STAGE = 4

# A variant whose output differs from the op's own choice by more than this (relative to the
# output's largest magnitude) is never picked; the kernels' tests hold them to 1.5e-5.
TUNE_TOLERANCE = 1e-3
TUNE_ROUNDS = 5


def _compile_freely():
    """The guard of ``autotune="all"``: candidates compile what they need."""
    return contextlib.nullcontext()


_compile_freely.refusal = ()


def _autotune(ctx, args, kwargs):
    """Time every conv variant the backend offers for this call's shape; return (name, function) of the fastest.

    Each candidate runs once to warm up (workspaces, cached filter transforms) and to be
    checked: one that raises or whose output is not within ``TUNE_TOLERANCE`` of the backend
    op's own result is dropped, so the pick is never worse than the op in correctness. Then the
    candidates run in turn for ``TUNE_ROUNDS`` rounds on the real input and the fastest single
    run decides: interleaving and taking the minimum keep a burst of load from another process
    (which only ever adds time) from deciding the pick. Backends without variants keep the op.

    The op's own choice runs first and compiles what it needs. Unless ``ctx.tune == "all"``,
    the candidates then run inside the backend's ``compiled_only`` (numba: kernels compiled in
    this process or held by numba's on-disk cache run, any other raises instead of compiling),
    and a candidate that would compile is left out: on a cold cache a variant's kernels cost
    seconds each to compile (the Winograd transforms 7-10 s on a 2-core machine), more than
    tuning saves on a first call. Variants whose kernels other layers compiled stay in the
    race, and once a later run finds them in the cache they are timed too.
    """
    x, w = args[0], args[1]
    cands = ctx.variants(x.shape, w.shape, args[3], args[4], args[5], args[6])
    if len(cands) < 2:
        return ("op", ctx.fused)
    # compared on the host: a copy (the candidates reuse the out buffer), whatever the backend
    ref = np.array(ctx.be.to_numpy(ctx.fused(*args, **kwargs)), copy=True)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    guard = ctx.be.compiled_only if ctx.tune != "all" else _compile_freely
    ok = {}
    for name, fn in cands.items():
        try:
            with guard():
                y = ctx.be.to_numpy(fn(*args, **kwargs))
        except (ValueError, TypeError, MemoryError):
            continue
        except guard.refusal:  # its kernels are not compiled yet (see above): not timed
            continue
        if y.shape == ref.shape and np.all(np.abs(y - ref) <= TUNE_TOLERANCE * scale + 1e-30):
            ok[name] = fn
    if not ok:
        return ("op", ctx.fused)
    best = {name: float("inf") for name in ok}
    for _ in range(TUNE_ROUNDS):
        for name, fn in ok.items():
            ctx.be.synchronize()  # a device backend queues work: time each run to its end
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            ctx.be.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    name = min(best, key=best.get)
    return (name, ok[name])


class _Ctx:
    """What one forward pass needs from the backend in force."""

    def __init__(self, pool: _BufferPool, autotune: bool, channels_last: bool = False):
        self.be = backends.current()
        # channels-last: activations (N, H, W, C) between layers, the backend's *_cl entries
        self.cl = channels_last
        self.fused = self.be.OPS["conv2d_fused_forward_cl" if channels_last else "conv2d_fused_forward"]
        self.variants = self.be.conv_variants_cl if channels_last else self.be.conv_variants
        self.pool = pool
        self.tune = autotune
        self.threads = self.be.threads() if autotune else None

    def done_with(self, a):
        self.pool.give(a, self.be)


class _Block:
    """A BasicBlock as fused convs: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); a Bottleneck as
    relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)), the residual and the last ReLU
    in conv3's epilogue."""

    def __init__(self, block, name):
        self.name = name
        self.conv1 = _FusedConv(block.conv1, block.bn1, True, f"{name}.conv1")
        self.conv2 = _FusedConv(block.conv2, block.bn2, True, f"{name}.conv2")
        # the convs in order; the last one takes the residual
        self.chain = [self.conv1, self.conv2]
        if isinstance(getattr(block, "conv3", None), Conv2d):
            self.chain.append(_FusedConv(block.conv3, block.bn3, True, f"{name}.conv3"))
        ds = getattr(block, "downsample", None)
        self.down = None
        if ds is not None:
            mods = list(ds) if isinstance(ds, Sequential) else [ds]
            if not (len(mods) in (1, 2) and isinstance(mods[0], Conv2d)
                    and (len(mods) == 1 or isinstance(mods[1], BatchNorm2d))):
                raise ValueError(f"{name}.downsample: expected Conv2d or Conv2d + BatchNorm2d, got {ds!r}")
            self.down = _FusedConv(mods[0], mods[1] if len(mods) == 2 else None, False, f"{name}.downsample")

    def __call__(self, x, ctx):
        h = self.conv1(x, ctx)
        identity = x if self.down is None else self.down(x, ctx)
        for conv in self.chain[1:-1]:
            h2 = conv(h, ctx)
            ctx.done_with(h)
            h = h2
        out = self.chain[-1](h, ctx, residual=identity)
        ctx.done_with(h)
        if identity is not x:
            ctx.done_with(identity)
        return out


def _is_basic_block(m) -> bool:
    return all(isinstance(getattr(m, a, None), c) for a, c in
               (("conv1", Conv2d), ("bn1", BatchNorm2d), ("conv2", Conv2d), ("bn2", BatchNorm2d))) \
        and not hasattr(m, "conv3")


def _is_bottleneck(m) -> bool:
    return all(isinstance(getattr(m, a, None), c) for a, c in
               (("conv1", Conv2d), ("bn1", BatchNorm2d), ("conv2", Conv2d), ("bn2", BatchNorm2d),
                ("conv3", Conv2d), ("bn3", BatchNorm2d)))


def _is_resnet(m) -> bool:
    needed = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
    if not all(hasattr(m, a) for a in needed):
        return False
    return all(isinstance(getattr(m, f"layer{i}"), Sequential)
               and all(_is_basic_block(b) or _is_bottleneck(b) for b in getattr(m, f"layer{i}"))
               for i in range(1, 5))


class CompiledModel:
    """A ResNet (BasicBlock or Bottleneck) compiled for inference; call it like the model: ``fast(x)`` -> logits.

    Built by ``compile_inference``. Holds BatchNorm-folded copies of the weights, runs every conv
    through ``ops.conv2d_fused_forward`` and never keeps anything for backward. ``forward_features``
    and ``embed`` return what the model's methods of those names return (layer4's feature map; the
    pooled (N, 512) features that feed ``fc``). Input of any real dtype is converted to the model's
    dtype, as ``Module`` does.

    Safe to call from several threads at once, as a thread-pool server does: each call borrows a
    set of activation buffers that no other call uses until it is given back, so the buffers kept
    between calls grow with the largest number of calls that ran at the same time.
    """

    # whether this class's forward can run channels-last (CompiledModel's ResNet forward can)
    _channels_last_ok = True

    def __init__(self, model: Module, autotune: bool = True, channels_last: bool | None = None):
        if not _is_resnet(model):
            raise ValueError(
                f"compile_inference: {type(model).__name__} is not a BasicBlock ResNet nor a Bottleneck one (needs conv1, "
                "bn1, maxpool, layer1..layer4 of BasicBlocks or Bottlenecks, avgpool, fc); use fold_batchnorm(model) for other models"
            )
        self.dtype = np.dtype(model.dtype)
        self.model_name = type(model).__name__
        # what callers of the model read besides calling it (the classify CLI shows these)
        self.arch = getattr(model, "arch", self.model_name)
        self.num_classes = getattr(model, "num_classes", None)
        self.training = False
        self.stem = _FusedConv(model.conv1, model.bn1, True, "conv1")
        mp = model.maxpool
        if not isinstance(mp, MaxPool2d):
            raise ValueError(f"compile_inference: expected maxpool to be MaxPool2d, got {type(mp).__name__}")
        self.pool_args = (mp.kernel_size, mp.stride, mp.padding, mp.dilation)
        self.blocks = [_Block(b, f"layer{i}.{j}") for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
        # stage i (layer{i}) -> the index of its first block in self.blocks
        self._stage_start = {}
        for k, blk in enumerate(self.blocks):
            self._stage_start.setdefault(int(blk.name[len("layer"):blk.name.index(".")]), k)
        if not isinstance(model.avgpool, AdaptiveAvgPool2d):
            raise ValueError(f"compile_inference: expected avgpool to be AdaptiveAvgPool2d, got {type(model.avgpool).__name__}")
        self.avg_size = model.avgpool.output_size
        self.fc = self._head(model.fc)
        self._init_buffers(autotune, channels_last)

    def _init_buffers(self, autotune, channels_last=None):
        # sets of activation buffers: a call borrows one no other call holds (see _pass)
        self._pools: list = []
        self._free_pools: list = []
        self._pools_lock = threading.Lock()
        # True, False or "all" (time every variant, compiling what it needs: see _autotune)
        self.autotune = autotune if autotune == "all" else bool(autotune)
        if channels_last and not self._channels_last_ok:
            raise ValueError(f"compile_inference: channels_last=True applies to ResNets; {type(self).__name__} "
                             "runs NCHW")
        # None: as the backend in force says (its channels_last()); True / False: always / never
        self.channels_last = None if channels_last is None else bool(channels_last)

    def _runs_channels_last(self, be) -> bool:
        if not self._channels_last_ok or self.channels_last is False:
            return False
        return bool(self.channels_last or be.channels_last())

    @staticmethod
    def _head(fc):
        """fc as (weight, bias) numpy arrays, or the module itself when it is not a plain Linear."""
        if isinstance(fc, Linear):
            w = np.array(backends.to_numpy(fc.weight.data))
            b = None if fc.bias is None else np.array(backends.to_numpy(fc.bias.data))
            return ("linear", w, b)
        if isinstance(fc, Identity):
            return ("identity",)
        return ("module", _copy_without_caches(fc).eval())

    def _check(self, x):
        be = backends.current()
        if not be.is_native(x):
            x = be.asarray(x)
        if x.dtype.kind == "c":
            raise TypeError(f"compiled {self.model_name}: complex input is not supported (got {x.dtype})")
        if x.ndim != 4 or x.shape[1] != self.stem.in_channels:
            raise ValueError(
                f"compiled {self.model_name}: expected input of shape (N, {self.stem.in_channels}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    # CompiledVGG has no stages: a split batch runs to the end slice by slice
    _stage_start: dict = {}

    def _join_at(self):
        """The index in ``blocks`` where a split batch joins again (``BATCH_JOIN_STAGE``), or None."""
        return None if BATCH_JOIN_STAGE is None else self._stage_start.get(BATCH_JOIN_STAGE)

    def _blocks_map(self, x, ctx, blocks, stem):
        """The stem when ``stem`` (x the NCHW input), then ``blocks``."""
        if stem:
            if ctx.cl:  # one transposing copy in; every layer after reads and writes channels-last
                xc = ctx.be.to_channels_last(x, out=ctx.pool.take((x.shape[0], x.shape[2], x.shape[3], x.shape[1]),
                                                                  x.dtype, ctx.be))
                x = self.stem.pooled(xc, ctx, None, self.pool_args)
                ctx.done_with(xc)
            else:
                # the stem conv's output goes into the max pool (numba: a cached image at a time, never stored)
                x = self.stem.pooled(x, ctx, ctx.be.conv2d_maxpool_fused, self.pool_args)
        for blk in blocks:
            out = blk(x, ctx)
            ctx.done_with(x)  # a no-op for arrays the pool did not hand out (the maxpool output)
            x = out
        return x

    def _features_map(self, x, ctx, joined=None):
        """layer4's output: (N, C, H, W), or (N, H, W, C) when ``ctx.cl``. ``joined``: the input of
        block ``_join_at()`` for the whole batch, stacked from the slices' ``_up_to_join`` (in this
        pass's layout); the stem and the blocks before it have run then."""
        if joined is None:
            return self._blocks_map(x, ctx, self.blocks, True)
        return self._blocks_map(joined, ctx, self.blocks[self._join_at():], False)

    def _up_to_join(self, x):
        """A slice's stem and blocks before ``_join_at()``, in a pass of its own: a copy of their
        output (the pass's buffers go back to its pool)."""
        with self._pass() as ctx:
            return self._blocks_map(x, ctx, self.blocks[:self._join_at()], True).copy()

    @contextmanager
    def _pass(self):
        """A forward pass's context, with a buffer pool that only this pass uses until it ends."""
        with self._pools_lock:
            if self._free_pools:
                pool = self._free_pools.pop()
            else:
                pool = _BufferPool()
                self._pools.append(pool)
        pool.reset()
        try:
            yield _Ctx(pool, self.autotune, self._runs_channels_last(backends.current()))
        finally:
            with self._pools_lock:
                self._free_pools.append(pool)

    def _in_parts(self, method, x):
        """``method(x)``, or, for a batch of at least ``BATCH_SPLIT_MIN_IMAGES`` images per thread of
        the backend, ``method`` on one slice of the batch per thread, each slice on a thread of its
        own whose kernels run on that thread alone (the backend's ``map_one_thread``), the results
        stacked.

        Inference treats each image on its own, so the parts need no barrier between kernels, where
        one pass over the whole batch meets one at every kernel (three per Winograd conv). Each part
        is a call of this model like any other (its own buffers; its own autotuned picks, keyed by
        the part's shape and one thread). A backend on one thread (``threads()`` 1) never splits.

        A ResNet's slices run only up to ``BATCH_JOIN_STAGE`` (``_up_to_join``); their outputs, stacked,
        go through the rest of the network as one batch on every thread (``method(x, joined)``),
        so that each of the last stage's large filters is read once per call.
        """
        be = backends.current()
        x = self._check(x)
        n = x.shape[0]
        # one slice per thread or none: fewer slices than threads would leave threads idle
        parts = be.threads()
        if parts < 2 or n < BATCH_SPLIT_MIN_IMAGES * parts:
            return method(x)
        bounds = [n * i // parts for i in range(parts + 1)]
        join = self._join_at()
        run = method if join is None else self._up_to_join

        def part(lo_hi):
            with backends.backend(be.NAME):  # the backend in force is per thread
                return run(x[lo_hi[0]:lo_hi[1]])

        outs = be.map_one_thread(part, list(zip(bounds, bounds[1:])))
        y = be.empty((n, *outs[0].shape[1:]), outs[0].dtype)
        for lo, hi, o in zip(bounds, bounds[1:], outs):
            y[lo:hi] = o
        return y if join is None else method(x, y)

    def forward_features(self, x):
        """The last feature map, layer4's output (N, 512, ceil(H/32), ceil(W/32)), as ``model.forward_features``."""
        return self._in_parts(self._forward_features, x)

    def embed(self, x):
        """The globally average-pooled features (N, 512) the classifier reads, as ``model.embed``."""
        return self._in_parts(self._embed, x)

    def forward(self, x):
        """Logits for a batch ``x`` of shape (N, C, H, W)."""
        return self._in_parts(self._forward, x)

    __call__ = forward

    def _forward_features(self, x, joined=None):
        with self._pass() as ctx:
            # the caller keeps this array, so it must not be a pool buffer the next call overwrites
            fmap = self._features_map(self._check(x), ctx, joined)
            return (fmap.transpose(0, 3, 1, 2) if ctx.cl else fmap).copy()

    def _embed(self, x, joined=None):
        with self._pass() as ctx:
            fmap = self._features_map(self._check(x), ctx, joined)
            y = ops.adaptive_avgpool2d_forward(fmap.transpose(0, 3, 1, 2) if ctx.cl else fmap, self.avg_size)
        return y.reshape(y.shape[0], -1)

    def _forward(self, x, joined=None):
        feats = self._embed(x, joined)
        kind = self.fc[0]
        if kind == "identity":
            return feats
        if kind == "module":
            with no_grad():
                return self.fc[1](feats)
        be = backends.current()
        _, w, b = self.fc  # one read: another thread may be replacing the tuple
        if not be.is_native(w):
            w, b = be.asarray(w), None if b is None else be.asarray(b)
            self.fc = ("linear", w, b)
        return ops.linear_forward(feats, w, b)

    def convs(self):
        """Every fused conv in execution order (stem, then each block's conv1, downsample, conv2)."""
        out = [self.stem]
        for blk in self.blocks:
            out += [blk.conv1] + ([blk.down] if blk.down is not None else []) + blk.chain[1:]
        return out

    def variants(self) -> dict:
        """What the autotuner picked: conv name -> {(input shape, dtype, backend, threads, tuning_key, residual): variant}."""
        return {c.name: {k: v[0] for k, v in c.chosen.items()} for c in self.convs() if c.chosen}

    def buffer_bytes(self) -> int:
        """Bytes of activation buffers kept between calls (0 when the backend allocates per call)."""
        with self._pools_lock:
            return sum(p.nbytes() for p in self._pools)

    def capture(self, example) -> "CapturedModel":
        """This model's forward recorded once as a device graph, for inputs shaped like ``example``.

        Returns a :class:`CapturedModel`; the backend in force must be able to record (its
        ``capture_graph`` entry; a CPU backend refuses with a RuntimeError saying so).
        """
        return CapturedModel(self, example)

    def __repr__(self):
        return f"CompiledModel({self.model_name}, {len(self.convs())} fused convs)"


class CapturedModel:
    """A compiled model's forward recorded as one device graph for a fixed input shape: ``g(x)`` -> logits.

    Built by ``fast.capture(example)`` under a backend that can record (the GPU one). The
    forward runs a few times to warm up, then once under capture; each call then copies ``x``
    into the recording's input buffer and replays every kernel with one launch, which removes
    the per-kernel launch cost that dominates batch-1 latency. ``x`` must have the example's
    shape (ValueError otherwise); its dtype is converted to the model's. Each call returns a
    new array. The recording keeps its own activation buffers (the compiled model's are not
    shared) and the weights as they were at capture; call it under the backend that recorded it.

        fast = mc.inference.compile_inference(resnet18(weights=path).eval())
        with mc.backend(gpu_backend):
            g = fast.capture(x1)          # x1: one image, (1, 3, 224, 224)
            logits = g(x2)                # same numbers as fast(x2)
    """

    def __init__(self, compiled: CompiledModel, example):
        be = backends.current()
        self.backend = be.NAME
        self.model_name = compiled.model_name
        x = compiled._check(example)
        self.input_shape = tuple(int(s) for s in x.shape)
        self.dtype = compiled.dtype
        # a copy that shares weights and autotuner picks but owns its activation buffers: the
        # recording keeps their addresses, so no other call may ever borrow them
        self._compiled = copy.copy(compiled)
        self._compiled._init_buffers(compiled.autotune)
        self._replay = be.capture_graph(self._compiled.forward, x)

    def __call__(self, x):
        """Logits for ``x`` of the recorded shape, by one replay of the graph."""
        be = backends.current()
        if be.NAME != self.backend:
            raise RuntimeError(f"captured {self.model_name}: recorded on backend {self.backend!r}, called under "
                               f"{be.NAME!r}; a recording replays only where it was made")
        shape = tuple(np.shape(x))
        if shape != self.input_shape:
            raise ValueError(f"captured {self.model_name}: recorded for input shape {self.input_shape}, got "
                             f"{shape}; capture again for another shape")
        return self._replay(self._compiled._check(x))

    forward = __call__

    def __repr__(self):
        return f"CapturedModel({self.model_name}, input {self.input_shape}, backend {self.backend!r})"


def _is_vgg(m) -> bool:
    feats, head = getattr(m, "features", None), getattr(m, "classifier", None)
    return (isinstance(feats, Sequential) and len(feats) > 0 and isinstance(feats[0], Conv2d)
            and all(isinstance(c, (Conv2d, BatchNorm2d, ReLU, MaxPool2d)) for c in feats)
            and isinstance(getattr(m, "avgpool", None), AdaptiveAvgPool2d)
            and isinstance(head, Sequential) and len(head) > 0
            and all(isinstance(c, (Linear, ReLU, Dropout, Identity)) for c in head))


class CompiledVGG(CompiledModel):
    """A VGG (``vgg11`` .. ``vgg19_bn``) compiled for inference; ``fast(x)`` -> logits, as the model in eval mode.

    Built by ``compile_inference``. ``features`` becomes a list of fused convs: each conv takes the
    BatchNorm after it folded in and the ReLU after that in its epilogue, and a conv followed by a
    2x2 max pool runs as one ``conv2d_maxpool_fused`` call (the pool reads the conv's output while it
    is in cache). The classifier runs as ``linear_forward`` and ``relu_forward``; dropout is the
    identity in eval mode. ``forward_features`` and ``embed`` return what the model's methods of those
    names return (``features``' output; the (N, hidden) penultimate features). Buffers and threads as
    ``CompiledModel``.
    """

    _channels_last_ok = False  # its features and head run NCHW

    def __init__(self, model: Module, autotune: bool = True, channels_last: bool | None = None):
        if not _is_vgg(model):
            raise ValueError(
                f"compile_inference: {type(model).__name__} is not a VGG (needs features: a Sequential of Conv2d, "
                "BatchNorm2d, ReLU and MaxPool2d starting with a conv; avgpool: AdaptiveAvgPool2d; classifier: a "
                "Sequential of Linear, ReLU and Dropout); use fold_batchnorm(model) for other models"
            )
        self.dtype = np.dtype(model.dtype)
        self.model_name = type(model).__name__
        self.arch = getattr(model, "arch", self.model_name)
        self.num_classes = getattr(model, "num_classes", None)
        self.training = False
        self.num_pools = getattr(model, "num_pools", 0)
        # ("conv", fused conv) | ("conv_pool", fused conv, pool args) | ("pool", pool args, ceil_mode) | ("relu",)
        self.steps = []
        kids = list(model.features)
        i = 0
        while i < len(kids):
            m = kids[i]
            if isinstance(m, Conv2d):
                j = i + 1
                bn = kids[j] if j < len(kids) and isinstance(kids[j], BatchNorm2d) else None
                if bn is not None:
                    if not bn.track_running_stats:
                        raise ValueError(f"compile_inference: features.{j} keeps no running statistics; it cannot be folded")
                    j += 1
                relu = j < len(kids) and isinstance(kids[j], ReLU)
                j += relu
                conv = _FusedConv(m, bn, relu, f"features.{i}")
                if j < len(kids) and isinstance(kids[j], MaxPool2d) and not kids[j].ceil_mode:
                    self.steps.append(("conv_pool", conv, self._pool_args(kids[j])))
                    j += 1
                else:
                    self.steps.append(("conv", conv))
                i = j
            elif isinstance(m, MaxPool2d):
                self.steps.append(("pool", self._pool_args(m), m.ceil_mode))
                i += 1
            elif isinstance(m, ReLU):
                self.steps.append(("relu",))
                i += 1
            else:
                raise ValueError(f"compile_inference: features.{i} ({type(m).__name__}) does not follow a conv; "
                                 "only a conv's own batchnorm can be folded")
        self.stem = self.steps[0][1]  # the first conv: what _check reads the input channels from
        self.avg_size = model.avgpool.output_size
        # the classifier, one entry per child so that embed stops where the model's does (before the last)
        self.head = []
        for c in model.classifier:
            if isinstance(c, Linear):
                self.head.append(self._head(c))
            elif isinstance(c, ReLU):
                self.head.append(("relu",))
            else:  # Dropout in eval mode, Identity
                self.head.append(("identity",))
        self._head_dev: dict = {}
        self._init_buffers(autotune, channels_last)

    @staticmethod
    def _pool_args(mp):
        return (mp.kernel_size, mp.stride, mp.padding, mp.dilation)

    def _check(self, x):
        x = super()._check(x)
        side = 2 ** self.num_pools
        if x.shape[0] < 1 or min(x.shape[2:]) < side:
            raise ValueError(f"compiled {self.arch}: input of shape {tuple(x.shape)} is too small: {self.num_pools} "
                             f"2x2 max pools need H and W of at least {side} (and a batch of at least 1)")
        return x

    def _features_map(self, x, ctx, joined=None):
        """The last feature map (NCHW). ``joined`` is always None here: a VGG has no stages, so a
        split batch runs to the end slice by slice (``_join_at``)."""
        for step in self.steps:
            kind = step[0]
            if kind == "conv":
                out = step[1](x, ctx)
            elif kind == "conv_pool":
                out = step[1].pooled(x, ctx, ctx.be.conv2d_maxpool_fused, step[2])
            elif kind == "pool":
                out, _ = ops.maxpool2d_forward(x, *step[1], need_argmax=False, ceil_mode=step[2])
            else:
                out = ops.relu_forward(x)
            ctx.done_with(x)  # a no-op for arrays the pool did not hand out (the input, a pool op's output)
            x = out
        return x

    def _run_head(self, h, entries):
        be = backends.current()
        arrays = self._head_dev.get(be.NAME)
        if arrays is None:  # the Linear weights in the backend's memory, converted once per backend
            arrays = self._head_dev[be.NAME] = [
                (e[0], be.asarray(e[1]), None if e[2] is None else be.asarray(e[2])) if e[0] == "linear" else e
                for e in self.head]
        for e in (arrays[i] for i in entries):
            if e[0] == "linear":
                h = ops.linear_forward(h, e[1], e[2])
            elif e[0] == "relu":
                h = ops.relu_forward(h)
        return h

    # forward, embed and forward_features: CompiledModel's (each image of a large batch on one thread)

    def _embed(self, x):
        """The penultimate features (N, hidden) the classifier's last layer reads, as ``model.embed``."""
        with self._pass() as ctx:
            fmap = self._features_map(self._check(x), ctx)
            y = ops.adaptive_avgpool2d_forward(fmap, self.avg_size)  # a new array, not a pool buffer
        return self._run_head(y.reshape(y.shape[0], -1), range(len(self.head) - 1))

    def _forward(self, x):
        """Logits for a batch ``x`` of shape (N, 3, H, W)."""
        return self._run_head(self._embed(x), [len(self.head) - 1])

    def convs(self):
        """Every fused conv in execution order."""
        return [s[1] for s in self.steps if s[0] in ("conv", "conv_pool")]

    def __repr__(self):
        return f"CompiledVGG({self.arch}, {len(self.convs())} fused convs)"


def compile_inference(model: Module, autotune: bool | str = True, channels_last: bool | None = None) -> CompiledModel:
    """Compile a ResNet (``resnet18`` .. ``resnet152``) or a VGG (``vgg11`` .. ``vgg19_bn``) for fast
    eval-mode inference.

    Returns a ``CompiledModel`` (a ``CompiledVGG`` for a VGG): ``fast(x)`` gives the logits ``model.eval()(x)``
    gives (to float32 rounding), ``fast.forward_features(x)`` and ``fast.embed(x)`` the features. BatchNorm is
    folded into the convs; each BasicBlock or Bottleneck becomes fused conv + bias (+ residual) + ReLU calls,
    a VGG's conv + ReLU (+ max pool) one call each. A model imported by ``minicnn.onnx.load`` becomes a
    ``CompiledOnnx`` (``minicnn/onnx/compiled.py``): each Conv takes the BatchNormalization it alone
    feeds, and a following Relu (or residual Add + Relu, or MaxPool), into one fused call; the other nodes run as
    the imported graph runs them. ``model`` is not modified; the
    weights are copied, so compile again after changing them. Other models: ``fold_batchnorm``.

    ``autotune=True``: on a backend that offers several conv algorithms (numba: im2col + GEMM,
    pointwise GEMM, Winograd F(2x2) and F(4x4)), the first call with a new input shape times
    each one on every layer's real input and keeps the fastest (a first call at batch 8 costs
    about a second more); ``fast.variants()`` shows the picks. A variant whose kernels are neither
    compiled in this process nor in numba's cache is left out rather than compiled just to be
    timed (seconds per kernel on a cold cache); ``autotune="all"`` compiles and times every one.
    ``autotune=False`` keeps the backend's fixed rule.

    ``channels_last``: a compiled ResNet keeps its activations (N, H, W, C) between layers and
    calls the backend's channels-last ops when the backend in force says so (``None``, the
    default: numba does, its transforms vectorise over channels); ``True`` or ``False`` forces
    the layout on every backend (one without channels-last kernels runs its NCHW ops through
    transposes). Inputs and outputs are NCHW either way. VGGs and ONNX imports run NCHW (``True``
    is refused for them).
    """
    from .onnx.graph import OnnxModel  # no onnx package needed: the graph is already minicnn modules

    if isinstance(model, OnnxModel):
        from .onnx.compiled import CompiledOnnx

        if channels_last:
            raise ValueError("compile_inference: channels_last=True applies to ResNets; an ONNX import runs NCHW")
        return CompiledOnnx(model, autotune=autotune)
    if _is_vgg(model):
        return CompiledVGG(model, autotune=autotune, channels_last=channels_last)
    return CompiledModel(model, autotune=autotune, channels_last=channels_last)
