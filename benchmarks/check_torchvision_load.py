#!/usr/bin/env python3
"""Checks that a bagssl ResNet checkpoint loads into torchvision and embeds like `bagssl-train embed`.

    python3 benchmarks/check_torchvision_load.py RUN/checkpoint.safetensors [--bin target/release/bagssl-train]

Writes a few random PNG images as an ImageFolder in a temporary directory, embeds them with
`bagssl-train embed` and with torchvision's model built from the checkpoint's `encoder.*` tensors
(the README's snippet), and prints the largest difference. Needs torch, torchvision, safetensors,
numpy and Pillow; not part of the tests. Exit status 1 when the embeddings differ by more than
--tol (relative to their largest magnitude).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file


def torchvision_encoder(meta, state):
    config = json.loads(meta["model_config"])
    arch, stem = config.get("arch", "mlp"), config.get("stem", "cifar")
    if arch not in ("resnet18", "resnet34", "resnet50"):
        sys.exit(f"arch {arch!r}: torchvision has no such model (this check covers resnet18/34/50)")
    net = getattr(torchvision.models, arch)()
    if stem == "cifar":
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    net.fc = torch.nn.Identity()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or not all(k.endswith("num_batches_tracked") for k in missing):
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return net.eval()


def embed(net, meta, images, stride):
    mean, std = (torch.tensor(json.loads(meta[k])).view(3, 1, 1) for k in ("normalize_mean", "normalize_std"))
    p = int(meta["patch_size"])
    x = (images.float() / 255 - mean) / std
    patches = x.unfold(2, p, stride).unfold(3, p, stride).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, p, p)
    with torch.no_grad():
        h = net(patches)
    return h.reshape(len(images), -1, h.shape[-1]).mean(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--bin", default="target/release/bagssl-train")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    with safe_open(args.checkpoint, "pt") as f:
        meta = f.metadata()
        state = {k[len("encoder."):]: f.get_tensor(k) for k in f.keys() if k.startswith("encoder.")}
    net = torchvision_encoder(meta, state)

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "images"
        (root / "a").mkdir(parents=True)
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
        for i, img in enumerate(pixels):
            Image.fromarray(img).save(root / "a" / f"{i:03d}.png")
        out = pathlib.Path(tmp) / "emb.safetensors"
        cmd = [args.bin, "embed", "--checkpoint", args.checkpoint, "--data", str(root), "--out", str(out),
               "--set", f"eval.stride={args.stride}", "--set", "data.cache_dir=\"off\""]
        subprocess.run(cmd, check=True)
        ours = load_file(str(out))["embeddings"].double()

    theirs = embed(net, meta, torch.from_numpy(pixels).permute(0, 3, 1, 2), args.stride).double()
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    print(f"{meta['model_config']}: {ours.shape[0]} images, max |bagssl - torchvision| = {diff:.3e} "
          f"(scale {scale:.3e}, relative {diff / scale:.3e})")
    sys.exit(0 if diff <= args.tol * scale else 1)


if __name__ == "__main__":
    main()
