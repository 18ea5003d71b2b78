"""Run a subprocess in which ``import torch`` fails, to prove a code path never needs PyTorch.

``blocked_env(tmp_dir)`` writes a stand-in ``torch`` package whose import raises ImportError and
returns an environment whose PYTHONPATH puts it first (then the repository, so ``python -m
minicnn`` runs this checkout). Python searches PYTHONPATH before site-packages, so the stand-in
shadows any installed torch.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_STANDIN = 'raise ImportError("torch is blocked in this process (tests/torch_block.py)")\n'


def blocked_env(tmp_dir) -> dict:
    """Environment variables for a subprocess where ``import torch`` raises ImportError."""
    block = Path(tmp_dir) / "torch_block"
    (block / "torch").mkdir(parents=True, exist_ok=True)
    (block / "torch" / "__init__.py").write_text(_STANDIN)
    env = dict(os.environ)
    parts = [str(block), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def run_minicnn(args, env=None, extra_env=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m minicnn ARGS`` from the repository root; output captured as text.

    ``env`` defaults to this process's environment with the repository first on PYTHONPATH;
    ``extra_env`` entries are added on top.
    """
    if env is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env = dict(env, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "minicnn", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def torch_importable(env) -> bool:
    """Whether ``import torch`` succeeds in a subprocess with ``env`` (False under ``blocked_env``)."""
    r = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, timeout=60)
    return r.returncode == 0
