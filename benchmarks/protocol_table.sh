#!/usr/bin/env bash
# The README's protocol table: a BagSSL checkpoint and an image-level baseline checkpoint, each
# evaluated under every protocol (kNN and linear probe on the held-out split), as Markdown.
#
#   benchmarks/protocol_table.sh BAG_CKPT IMAGE_CKPT DATA [OUT_DIR]
#
# BAG_CKPT: trained with configs/cifar10-resnet-cpu.toml (16x16 patches); IMAGE_CKPT: with
# configs/vicreg-image-cpu.toml (two 32x32 random-resized views); DATA: the training ImageFolder
# both used (their held-out split is the same: data.val_fraction with one fixed seed). Each
# evaluation's JSON is kept in OUT_DIR (default runs/protocol-table) and reused when present.
set -euo pipefail
if [ $# -lt 3 ]; then sed -n 2,11p "$0"; exit 2; fi
bag=$1 img=$2 data=$3 out=${4:-runs/protocol-table}
bin=${BAGSSL_BIN:-target/release/bagssl-train}
[ -x "$bin" ] || cargo build --release -p bagssl-train
mkdir -p "$out"

ev() { # name checkpoint --set values...
  local name=$1 ckpt=$2
  shift 2
  local args=()
  for s in "$@"; do args+=(--set "$s"); done
  if [ ! -s "$out/$name.json" ]; then
    echo "$(date +%T) eval $name" >&2
    "$bin" eval --checkpoint "$ckpt" --data "$data" --out "$out/$name.json" "${args[@]}" > "$out/$name.log" 2>&1
  fi
}
# Grids at stride 8 (3 x 3 patches of 16 on 32x32 images), 16 random patches: the table costs
# about 40 minutes of 2 CPU cores. The baseline's grids cut 16x16 patches and resize them to its
# 32x32 input (eval.patch = 16).
ms=('eval.protocols=["multiscale"]' 'eval.scales=[16,24,32]' eval.stride=8)
ev bag-grid "$bag" 'eval.protocols=["grid","pyramid"]' eval.stride=8
ev bag-whole-random "$bag" 'eval.protocols=["whole","random"]' eval.random_patches=16
ev bag-multiscale "$bag" "${ms[@]}"
ev img-whole-random "$img" 'eval.protocols=["whole","random"]' eval.random_patches=16
ev img-grid "$img" 'eval.protocols=["grid","pyramid"]' eval.patch=16 eval.stride=8
ev img-multiscale "$img" "${ms[@]}"

python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def protocols(prefix):
    merged = {}
    for f in sorted(out.glob(prefix + "-*.json")):
        merged.update(json.loads(f.read_text())["trained"]["protocols"])
    return merged
rows = [
    ("whole", "whole image resized to the input side, one forward"),
    ("grid", "mean over the 3 x 3 grid of 16x16 patches (stride 8)"),
    ("multiscale", "mean over grids of 16, 24 and 32 pixel patches (stride 8)"),
    ("random", "mean of 16 random patches (each model's training views)"),
    ("pyramid", "grid mean + four quadrant means (5 x 128 features)"),
]
bag, img = protocols("bag"), protocols("img")
cell = lambda d, p: f"{100 * d[p]['knn']:.1f} / {100 * d[p]['linear']:.1f}" if p in d else "-"
print("| protocol | how an image becomes one embedding | image-level VICReg (kNN / linear %) | BagSSL (kNN / linear %) |")
print("| --- | --- | ---: | ---: |")
for p, what in rows:
    print(f"| `{p}` | {what} | {cell(img, p)} | {cell(bag, p)} |")
PY
