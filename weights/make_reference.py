"""Write the PyTorch reference outputs that ``minicnn verify`` checks a ResNet against.

    python weights/make_reference.py                       # seeded resnet18 -> weights/reference/resnet18_seed0.npz
    python weights/make_reference.py --weights resnet18.pth --out weights/reference/resnet18_imagenet.npz

Needs torch (not torchvision: the reference model is the plain-torch ResNet in tests/torch_resnet.py).
By default the weights are ``minicnn.models.resnet.seeded_state_dict(arch, seed)``, generated with
numpy alone, so the shipped file checks any machine offline: ``minicnn weights seed resnet18 w.safetensors``
writes the same weights, and ``minicnn verify w.safetensors`` must PASS.

The file holds (all arrays; see weights/README.md):
  eval mode   inputs (2,3,224,224) float16 (a sample photo preprocessed as torchvision does, and seeded
              N(0,1) noise; both sides run on their exact float32 values), logits, features (layer4), top5
  train mode  train_inputs (2,3,64,64), train_dlogits (the upstream gradient), train_logits, train_dx,
              train_grad:<key> for a few parameters, train_state:<key> running statistics after the step
  metadata    arch, num_classes, weights (how they were made), weights_digest, torch_version, keys, key_shapes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import torch_resnet  # noqa: E402
from minicnn.cli.verify import TRAIN_GRAD_KEYS, TRAIN_STATE_KEYS, state_dict_digest  # noqa: E402
from minicnn.io.images import preprocess  # noqa: E402
from minicnn.models.resnet import seeded_state_dict  # noqa: E402

PHOTO = ROOT / "minicnn" / "data" / "images" / "chelsea.jpg"


def eval_inputs():
    """The sample photo (torchvision preprocessing) and seeded noise, rounded to float16 for storage."""
    photo = preprocess(PHOTO, mode="torchvision")
    noise = np.random.default_rng(1).standard_normal((3, 224, 224))
    x16 = np.stack([photo, noise]).astype(np.float16)
    return x16, np.array([f"{PHOTO.name}, preprocess torchvision", "seeded N(0, 1) noise, default_rng(1)"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=sorted(torch_resnet.LAYERS))
    ap.add_argument("--seed", type=int, default=0, help="seed of seeded_state_dict (ignored with --weights)")
    ap.add_argument("--weights", help="a state dict file torch.load reads, instead of the seeded weights")
    ap.add_argument("--out", help="output .npz (default weights/reference/<arch>_seed<seed>.npz)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    if args.weights:
        sd = torch.load(args.weights, map_location="cpu", weights_only=True)
        sd = {k: v.numpy() for k, v in sd.items()}
        how = f"file {Path(args.weights).name}"
    else:
        sd = seeded_state_dict(args.arch, args.seed)
        how = f"seeded_state_dict({args.arch!r}, seed={args.seed})"
    num_classes = int(np.shape(sd["fc.weight"])[0])
    model = torch_resnet.build(args.arch, num_classes, sd).float()
    out_path = Path(args.out) if args.out else ROOT / "weights" / "reference" / f"{args.arch}_seed{args.seed}.npz"

    x16, names = eval_inputs()
    x = torch.from_numpy(x16.astype(np.float32))
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.fc(torch.flatten(model.avgpool(feats), 1))
        logits64 = model.double()(x.double()).float()
    model.float()
    top = torch.topk(logits, 6, dim=1)
    gaps = (top.values[:, :-1] - top.values[:, 1:]).min().item()
    print(f"eval: logits std {logits.std().item():.3f}, smallest gap among the top 6 {gaps:.4f}, "
          f"float32 vs float64 in torch {((logits - logits64).abs().max() / logits64.abs().max()).item():.2e}")
    print("top-5:", top.indices[:, :5].tolist())

    # training mode: batch statistics, one backward from a fixed upstream gradient
    g = np.random.default_rng(2)
    tx = torch.from_numpy(g.standard_normal((2, 3, 64, 64)).astype(np.float32)).requires_grad_(True)
    tdl = torch.from_numpy(g.standard_normal((2, num_classes)).astype(np.float32))
    model.train()
    model.zero_grad()
    tlogits = model(tx)
    tlogits.backward(tdl)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    keys = list(model.state_dict().keys())
    data = {
        "inputs": x16,
        "input_names": names,
        "logits": logits.numpy(),
        "features": feats.numpy(),
        "top5": top.indices[:, :5].numpy().astype(np.int64),
        "train_inputs": tx.detach().numpy(),
        "train_dlogits": tdl.numpy(),
        "train_logits": tlogits.detach().numpy(),
        "train_dx": tx.grad.numpy(),
        "arch": np.array(args.arch),
        "num_classes": np.array(num_classes),
        "weights": np.array(how),
        "weights_digest": np.array(state_dict_digest(sd)),
        "torch_version": np.array(torch.__version__),
        "keys": np.array(keys),
        "key_shapes": np.array([",".join(str(d) for d in model.state_dict()[k].shape) for k in keys]),
    }
    for k in TRAIN_GRAD_KEYS:
        data[f"train_grad:{k}"] = params[k].grad.numpy()
    for k in TRAIN_STATE_KEYS:
        data[f"train_state:{k}"] = buffers[k].numpy()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **data)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.2f} MB) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
