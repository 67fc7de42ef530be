#!/usr/bin/env bash
# Where does GPU training part from CPU training on CIFAR-10? One bounded device command
# (about 3 minutes) that leaves everything in $OUT/diag.tar.gz:
#
#   A. the reference configuration for 20 steps on the CPU and on the GPU from the same seed,
#      a loss line per step (metrics.jsonl each): they must agree within the TF32 bounds
#   B. the reference configuration, 30 epochs on the GPU, loss every 25 steps + evaluation
#   C. configs/cifar10.toml (width 512, 64 images) on the GPU: compare with the CPU run in
#      benchmarks/RESULTS.md
#   D. the PyTorch reference, 30 epochs with bf16 autocast, on the same 10% held out
#   E. the B checkpoint's bag embeddings of 200 images, CPU vs GPU (embed --device ...)
#
# Here first: cargo xtask device-tests. Then run(command="bash scripts/gpu-diagnose.sh", carry=[".device"]).
set -u
cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
BUDGET=${BAGSSL_SESSION_BUDGET:-240}
OUT=${OUT:-.device/diag}
D=/tmp/diag
mkdir -p "$OUT" "$D"
. scripts/gpu-env.sh
CLI=.device/bin/bagssl-train
left() { echo $((BUDGET - ($(date +%s) - START))); }
step() {
  local name=$1 cap=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt 15 ]; then
    echo "skipped $name: budget spent" | tee -a "$D/summary.txt"
    return
  fi
  [ "$cap" -lt "$l" ] || cap=$l
  echo "== $name (cap ${cap}s, at $(($(date +%s) - START))s)" | tee -a "$D/summary.txt"
  timeout "$cap" "$@" >"$D/$name.log" 2>&1
  echo "rc $? after $(($(date +%s) - START))s" | tee -a "$D/summary.txt"
  tail -n 12 "$D/$name.log" | tee -a "$D/summary.txt"
}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$D/summary.txt"
mkdir -p /tmp/cifar && tar xJf .device/shared/data/cifar10-train-jpeg.tar.xz -C /tmp/cifar
COMMON=(--data /tmp/cifar --quiet --set data.cache_dir=/tmp/bagssl-cache)

step A-cpu 60 "$CLI" train --config configs/reference.toml --device cpu "${COMMON[@]}" --out "$D/A-cpu" \
  --max-steps 20 --set train.log_every=1
step A-gpu 30 "$CLI" train --config configs/reference.toml --device cuda "${COMMON[@]}" --out "$D/A-gpu" \
  --max-steps 20 --set train.log_every=1
step B-ref-gpu 90 "$CLI" train --config configs/reference.toml --device cuda "${COMMON[@]}" --out "$D/B" \
  --set train.log_every=25
step C-cifar10-gpu 80 "$CLI" train --config configs/cifar10.toml --device cuda "${COMMON[@]}" --out "$D/C" \
  --set train.log_every=100
mkdir -p /tmp/small/train
for c in /tmp/cifar/train/*/; do
  n=$(basename "$c")
  mkdir -p "/tmp/small/train/$n"
  ls "$c" | head -n 20 | while read -r f; do cp "$c$f" "/tmp/small/train/$n/"; done
done
if [ -f "$D/B/checkpoint.safetensors" ]; then
  step E-embed-cpu 40 "$CLI" embed --checkpoint "$D/B/checkpoint.safetensors" --data /tmp/small --device cpu \
    --out "$D/emb-cpu.safetensors" --set data.cache_dir=off
  step E-embed-gpu 20 "$CLI" embed --checkpoint "$D/B/checkpoint.safetensors" --data /tmp/small --device cuda \
    --out "$D/emb-gpu.safetensors" --set data.cache_dir=off
  python3 - "$D" <<'EOF' 2>&1 | tee -a "$D/summary.txt"
import sys
from safetensors.numpy import load_file
d = sys.argv[1]
a, b = load_file(f"{d}/emb-cpu.safetensors")["embeddings"], load_file(f"{d}/emb-gpu.safetensors")["embeddings"]
import numpy as np
print("E: embeddings cpu vs gpu: max|diff| %.3e, max|cpu| %.3e, rel %.3e" % (
    np.abs(a - b).max(), np.abs(a).max(), np.abs(a - b).max() / np.abs(a).max()))
EOF
fi
step D-torch 100 env PYTHONUNBUFFERED=1 BAGSSL_CACHE=/tmp/torch-cache python3 .device/shared/reference/torch_bagssl.py \
  --data /tmp/cifar --val-fraction 0.1 --epochs 30 --amp --eval-every 10 --eval-init
for r in A-cpu A-gpu B C; do cp "$D/$r/metrics.jsonl" "$D/$r.metrics.jsonl" 2>/dev/null; cp "$D/$r/eval.json" "$D/$r.eval.json" 2>/dev/null; done
tar czf "$OUT/diag.tar.gz" -C "$D" --exclude='*.safetensors' --exclude='A-cpu' --exclude='A-gpu' --exclude='B' --exclude='C' .
cp "$D/summary.txt" "$OUT/"
echo "done after $(($(date +%s) - START)) s"
