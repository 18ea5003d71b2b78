"""Fashion-MNIST time to accuracy: minicnn against PyTorch, same net, same recipe, same batches.

    minicnn bench fashion [--target 0.90] [--max-epochs 5] [--eval-every 117] [--threads 2] [--out DIR]
    python -m minicnn.bench.fashion [the same options]

The net is ``fashion_convnet`` (conv 5x5 1->32 pad 2, ReLU, max pool 2, conv 5x5 32->64 pad 2,
ReLU, max pool 2, linear 3136->10; 83,466 parameters) and the recipe is the one a user of either
framework would write: Adam (lr 1e-3, betas 0.9/0.999), batch 128, pixels scaled to [0, 1], no
augmentation, cross-entropy. Both frameworks start from the same weights (minicnn's initialisation
for the seed, copied into PyTorch) and see the same batches in the same order (epoch ``e`` takes
the permutation of ``numpy.random.default_rng([seed, e])``; the last, smaller batch is kept).

The training clock runs over the steps only (taking the batch out of the training arrays
included, as a loop over arrays does); every ``eval_every`` steps and at the end of every epoch
it stops while the 10,000 test images are scored. The time to accuracy is the training clock at
the first evaluation whose test accuracy reaches ``target``; the ratio is minicnn's over
PyTorch's, so below 1.0 means minicnn got there sooner. Each framework trains in a process of its
own with the same thread count (numba's threads, OpenBLAS and PyTorch's intra-op pool all pinned
to ``threads``), and first takes one step with a throwaway copy of the net off the clock (numba's
one-time compilation is not training time). The two processes then train in turns, one scoring
interval each, the order reversed every round: while one trains the other waits, and a change of
the machine's speed (a shared host's speed moves by tens of percent between minutes) falls on both
alike instead of on whichever ran second. The first-step losses are checked against each other
afterwards (identical weights and batches, so they must agree to float32 rounding; a mismatch
marks both rows failed).

The data are Debian's ``dataset-fashion-mnist``; where it is absent the suite says so in one
line and times nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from . import harness

FRAMEWORKS = ("minicnn", "pytorch")
LR = 1e-3
BATCH = 128
# the minicnn Sequential's state-dict names -> the PyTorch Sequential built below (same indices)
_PARAMS = ("0.weight", "0.bias", "3.weight", "3.bias", "8.weight", "8.bias")


def _batches(n: int, seed: int, epoch: int, batch: int = BATCH):
    """The index arrays of one epoch's batches, the same for every framework."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i:i + batch] for i in range(0, n, batch)]


def _data(root=None, train_size=None):
    from minicnn.data import FashionMNIST

    X, y = FashionMNIST(root, train=True).arrays()
    Xt, yt = FashionMNIST(root, train=False).arrays()
    if train_size is not None:
        X, y = X[:train_size], y[:train_size]
    return X, y, Xt, yt


# -- the two trainers: (step(idx) -> loss, accuracy(X, y) -> float) ---------------------------------


def _minicnn_trainer(weights: dict, X, y):
    from minicnn import nn, optim
    from minicnn.models import fashion_convnet
    from minicnn.train import predict

    model = fashion_convnet(weights=weights)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=LR)

    def step(idx):
        xb, yb = X[idx], y[idx]
        model.zero_grad()
        loss = loss_fn(model(xb), yb)
        model.backward_params(loss_fn.backward())
        opt.step()
        return float(loss)

    def accuracy(Xt, yt):
        return float((predict(model, Xt).argmax(axis=1) == yt).mean())  # predict restores the train mode

    return step, accuracy


def _torch_trainer(weights: dict, X, y, threads: int):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.0), nn.Linear(64 * 7 * 7, 10))
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(weights[k])) for k in _PARAMS})
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(idx):
        xb, yb = torch.from_numpy(X[idx]), torch.from_numpy(y[idx])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def accuracy(Xt, yt):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.from_numpy(Xt[i:i + 1000])).argmax(1) for i in range(0, len(Xt), 1000)])
        model.train()
        return float((pred.numpy() == yt).mean())

    return step, accuracy


class _Training:
    """One framework's training in this process, advanced one scoring interval at a time."""

    def __init__(self, framework: str, weights: dict, target: float, max_epochs: int, eval_every: int, seed: int,
                 threads: int, root=None, train_size=None):
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
        self.framework, self.target, self.seed = framework, target, seed
        self.max_epochs, self.eval_every = max_epochs, eval_every
        self.X, self.y, self.Xt, self.yt = _data(root, train_size)

        def trainer():
            if framework == "minicnn":
                return _minicnn_trainer(weights, self.X, self.y)
            return _torch_trainer(weights, self.X, self.y, threads)

        # one step and one scoring on a throwaway copy first, off the clock: numba's one-time compilation
        # (or its load from the cache) and the allocators' warm-up are not training time
        warm_step, warm_accuracy = trainer()
        warm_step(_batches(len(self.X), seed, 1)[0])
        warm_accuracy(self.Xt[:BATCH], self.yt[:BATCH])
        del warm_step, warm_accuracy
        self.step, self.accuracy = trainer()
        self.clock, self.steps, self.first_loss, self.evals, self.step_s = 0.0, 0, None, [], []
        self.reached, self.done = None, False
        self._intervals = self._run()

    def _run(self):
        """Train epoch by epoch; yield after each scoring (every ``eval_every`` steps and at an epoch's end)."""
        for epoch in range(1, self.max_epochs + 1):
            batches = _batches(len(self.X), self.seed, epoch)
            for b, idx in enumerate(batches, 1):
                t0 = time.perf_counter()
                loss = self.step(idx)
                dt = time.perf_counter() - t0
                self.clock, self.steps = self.clock + dt, self.steps + 1
                self.step_s.append(dt)
                if self.first_loss is None:
                    self.first_loss = loss
                if self.steps % self.eval_every == 0 or b == len(batches):
                    acc = self.accuracy(self.Xt, self.yt)  # off the clock
                    self.evals.append({"epoch": epoch, "step": self.steps, "seconds": self.clock,
                                       "test_accuracy": acc, "loss": loss})
                    if acc >= self.target:
                        self.reached = self.evals[-1]
                    self.done = self.reached is not None or (epoch == self.max_epochs and b == len(batches))
                    yield self.evals[-1]
                    if self.done:
                        return

    def interval(self) -> dict:
        """Train up to the next scoring and return it (``done`` set once the target is reached or the
        epochs run out)."""
        return dict(next(self._intervals), done=self.done)

    def row(self) -> dict:
        r = self.reached
        return {"framework": self.framework, "status": "ok", "target": self.target, "first_loss": self.first_loss,
                "reached": r is not None, "steps_to_target": r["step"] if r else None,
                "seconds_to_target": r["seconds"] if r else None,
                "accuracy_at_target": r["test_accuracy"] if r else None,
                "median_step_ms": float(np.median(self.step_s)) * 1e3 if self.step_s else float("nan"),
                "steps": self.steps, "train_seconds": self.clock, "evals": self.evals}


# The parent and a child speak in lines: the child writes "@fashion <json>" on stdout when it is
# ready and after each interval, and reads "go" (train one more interval) or "stop" (write the row
# and exit) from stdin. Anything else a library prints on stdout is ignored.
_TAG = "@fashion "


def child(framework: str, weights_path: str, target: float, max_epochs: int, eval_every: int, seed: int,
          threads: int, root=None, train_size=None) -> None:
    """The child process's side: set up (and warm up) ``framework``'s training, then train one
    scoring interval per "go" read from stdin; on "stop" (or the end of stdin) write the row."""
    harness.set_threads(threads)
    training = _Training(framework, dict(np.load(weights_path)), target, max_epochs, eval_every, seed, threads,
                         root, train_size)

    def say(obj):
        sys.stdout.write(_TAG + json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    for line in sys.stdin:
        if line.strip() != "go":
            break
        say(training.interval())
    say(training.row())


class _Child:
    """A framework's training process as the parent drives it."""

    def __init__(self, framework, weights_path, opts, threads, stderr_path):
        import subprocess

        from .end_to_end import PACKAGE_ROOT, _process_env

        args = [sys.executable, "-m", "minicnn.bench.fashion", "--child", framework, "--weights", weights_path,
                "--target", repr(opts["target"]), "--max-epochs", str(opts["max_epochs"]),
                "--eval-every", str(opts["eval_every"]), "--seed", str(opts["seed"]), "--threads", str(threads)]
        if opts.get("root"):
            args += ["--root", opts["root"]]
        if opts.get("train_size"):
            args += ["--train-size", str(opts["train_size"])]
        self.framework, self.stderr_path, self.failed = framework, stderr_path, None
        self._err = open(stderr_path, "w")
        self.proc = subprocess.Popen(args, cwd=str(PACKAGE_ROOT), env=_process_env(threads, None),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)

    def _read(self):
        """The child's next message, or None (and ``failed`` set) when it exited without one."""
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG):])
        self.proc.wait()
        self._err.close()
        with open(self.stderr_path) as f:
            tail = [ln for ln in f.read().splitlines() if ln.strip()][-1:] or [f"exit status {self.proc.returncode}"]
        self.failed = tail[0][:300]
        return None

    def ready(self) -> bool:
        return self._read() is not None

    def interval(self):
        if self.failed:
            return None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        if not self.failed:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            row = self._read()
            if row is not None:
                self.proc.wait()
                self._err.close()
                return row
        return {"framework": self.framework, "status": "FAIL", "note": self.failed}


def _train_alternating(frameworks, weights_path, opts, threads, tmp, log) -> list[dict]:
    """Start each framework's process (one after the other, so their warm-ups do not share the
    cores), then let them train in turns, one scoring interval each, the order reversed every
    round (ABBA...): while one trains the other waits on its stdin, and a drift of the machine's
    speed falls on both alike."""
    children = []
    for fw in frameworks:
        c = _Child(fw, weights_path, opts, threads, os.path.join(tmp, fw + ".stderr"))
        c.ready()
        children.append(c)
    active = [c for c in children if not c.failed]
    rnd = 0
    while active:
        for c in (active if rnd % 2 == 0 else active[::-1]):
            e = c.interval()
            if e is None or e["done"]:
                active.remove(c)
            if e is not None:
                log(f"{c.framework:<8} epoch {e['epoch']} step {e['step']:5d}  {e['seconds']:7.1f} s  "
                    f"test accuracy {e['test_accuracy']:.4f}")
        rnd += 1
    return [c.finish() for c in children]


def run(target: float = 0.90, max_epochs: int = 5, eval_every: int = 117, seed: int = 0, threads: int = 2,
        out_dir: str | None = None, root=None, train_size=None, frameworks=FRAMEWORKS, log=print) -> dict:
    """Train both frameworks to ``target`` test accuracy, in alternating intervals; print and return the table."""
    import minicnn as mc
    from minicnn.models import fashion_convnet

    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be a test accuracy in (0, 1], got {target}")
    if max_epochs < 1 or eval_every < 1:
        raise ValueError(f"max_epochs and eval_every must be at least 1, got {max_epochs} and {eval_every}")
    _data(root, 1)  # the data set's one-line message now, before any process starts
    frameworks = list(frameworks)
    if "pytorch" in frameworks and not _has_torch():
        log("PyTorch is not installed: timing minicnn alone")
        frameworks.remove("pytorch")
    meter = harness.LoadMeter()
    opts = {"target": target, "max_epochs": max_epochs, "eval_every": eval_every, "seed": seed, "root": root,
            "train_size": train_size}
    with tempfile.TemporaryDirectory(prefix="minicnn-bench-fashion-") as tmp:
        mc.manual_seed(seed)
        weights = {k: np.asarray(v) for k, v in fashion_convnet().state_dict().items()}
        path = os.path.join(tmp, "init.npz")
        np.savez(path, **weights)
        rows = _train_alternating(frameworks, path, opts, threads, tmp, log)
    ok = {r["framework"]: r for r in rows if r["status"] == "ok"}
    if len(ok) == 2:
        a, b = ok["minicnn"]["first_loss"], ok["pytorch"]["first_loss"]
        if abs(a - b) > 1e-4 * max(1.0, abs(b)):
            for r in rows:
                r.update(status="FAIL", note=f"first-step losses differ (minicnn {a:.6f}, pytorch {b:.6f}): not the same run")
    payload = {"suite": "fashion", "machine": harness.machine_info(), "threads": threads, "options": opts,
               "rows": rows, "other_load": meter.other_cores()}
    text = markdown(payload)
    log("")
    log(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        harness.write_json(os.path.join(out_dir, "fashion.json"), payload)
        with open(os.path.join(out_dir, "fashion.md"), "w") as f:
            f.write(text + "\n")
    return payload


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def markdown(payload: dict) -> str:
    """The time-to-accuracy table, with minicnn's time over PyTorch's."""
    o = payload["options"]
    lines = [f"### Fashion-MNIST: seconds of training to {o['target']:.2f} test accuracy "
             f"(fashion_convnet, Adam {LR:g}, batch {BATCH}, {payload['threads']} threads)", "",
             "| framework | status | steps | seconds | test accuracy then | median step (ms) |",
             "|---|---|---|---|---|---|"]
    by = {}
    for r in payload["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['framework']} | {r['status']}: {r.get('note', '')} | | | | |")
            continue
        by[r["framework"]] = r
        if r["reached"]:
            lines.append(f"| {r['framework']} | ok | {r['steps_to_target']} | {r['seconds_to_target']:.1f} | "
                         f"{r['accuracy_at_target']:.4f} | {r['median_step_ms']:.1f} |")
        else:
            best = max(e["test_accuracy"] for e in r["evals"]) if r["evals"] else float("nan")
            n = o["max_epochs"]
            lines.append(f"| {r['framework']} | not reached in {n} epoch{'s' * (n != 1)} (best {best:.4f}) | "
                         f"{r['steps']} | {r['train_seconds']:.1f} | | {r['median_step_ms']:.1f} |")
    m, p = by.get("minicnn"), by.get("pytorch")
    if m and p and m["reached"] and p["reached"]:
        lines += ["", f"minicnn / PyTorch, seconds to {o['target']:.2f}: **{m['seconds_to_target'] / p['seconds_to_target']:.2f}x**; "
                      f"per step: {m['median_step_ms'] / p['median_step_ms']:.2f}x"]
    other = payload.get("other_load")
    if other is not None:
        lines.append(f"\nother processes used {other:.2f} cores on average during the run")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fashion-MNIST seconds to a test accuracy: minicnn vs PyTorch")
    ap.add_argument("--target", type=float, default=0.90, help="test accuracy to reach (default 0.90)")
    ap.add_argument("--max-epochs", type=int, default=5, help="give up after this many epochs (default 5)")
    ap.add_argument("--eval-every", type=int, default=117, help="score the test set every N steps (default 117)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default=None, help="folder of the four IDX files (default: Debian's)")
    ap.add_argument("--train-size", type=int, default=None, help="train on the first N images only")
    ap.add_argument("--out", default=None, help="directory for fashion.json and fashion.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.weights, a.target, a.max_epochs, a.eval_every, a.seed, a.threads, a.root, a.train_size)
        return 0
    run(a.target, a.max_epochs, a.eval_every, a.seed, a.threads, a.out, a.root, a.train_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
