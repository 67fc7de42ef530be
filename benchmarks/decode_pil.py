"""Decode throughput of PIL (and torchvision's DataLoader, when torch is importable) on an
ImageFolder tree, doing what `bagssl-train bench --decode` does: JPEG to RGB bytes, and with
--image-size S, Resize(S) (antialiased) + CenterCrop(S). Best of three; one JSON line per
measurement.

    python3 benchmarks/decode_pil.py FOLDER [--image-size S] [--workers N]
"""
import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
from PIL import Image

EXTS = (".jpg", ".jpeg", ".png")


def files_of(root):
    out = []
    for c in sorted(os.listdir(root)):
        d = os.path.join(root, c)
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith(EXTS)]
    return out


def decode(path, size):
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size:
            w, h = im.size
            if w <= h:
                nw, nh = size, int(size * h / w)
            else:
                nw, nh = int(size * w / h), size
            im = im.resize((nw, nh), Image.BILINEAR)  # PIL's resize is antialiased, like Resize(S)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im).shape[0]


def _work(args):
    paths, size = args
    return sum(decode(p, size) > 0 for p in paths)


def timed(label, threads, fn, n):
    s = float("inf")
    for _ in range(3):  # best of three, as `bench --decode`: the machines are shared
        t = time.perf_counter()
        done = fn()
        s = min(s, time.perf_counter() - t)
        assert done == n, (done, n)
    print(json.dumps({"decoder": label, "threads": threads, "images": n, "seconds": s,
                      "images_per_s": n / s, "images_per_s_per_core": n / s / threads}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    a = ap.parse_args()
    paths = files_of(a.folder)
    n = len(paths)
    _work((paths, a.image_size))  # warm the page cache, as the bagssl side does
    timed("PIL", 1, lambda: _work((paths, a.image_size)), n)
    chunks = [(paths[i::a.workers * 8], a.image_size) for i in range(a.workers * 8)]
    with mp.Pool(a.workers) as pool:
        timed("PIL", a.workers, lambda: sum(pool.map(_work, chunks)), n)
    try:
        import torch
        from torchvision import datasets, transforms
    except ImportError:
        return
    torch.set_num_threads(1)
    steps = [transforms.Resize(a.image_size), transforms.CenterCrop(a.image_size)] if a.image_size else []
    ds = datasets.ImageFolder(a.folder, transforms.Compose(steps + [transforms.PILToTensor()]))
    dl = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=a.workers)
    timed("DataLoader", a.workers, lambda: sum(len(y) for _, y in dl), n)


if __name__ == "__main__":
    main()
