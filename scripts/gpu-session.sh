#!/usr/bin/env bash
# One GPU lease, one command: every GPU measurement the CUDA issues ask for, bounded to about
# 9 minutes, with a summary and one archive of logs in $OUT (the device tool brings back at
# most 8 files).
#
# Here (CPU machine) first:  cargo xtask device-tests     (binaries, reference, CIFAR -> .device/)
# Then, with the device tool: run(command="bash scripts/gpu-session.sh", carry=[".device"], timeout_s=600)
#
# 1. scripts/gpu-check.sh: every GPU parity test (skips are failures) + bench_kernels table
# 2. bagssl-train bench --device cuda: the reference configuration over 300 steps, and its scale
#    (8192-wide projector; 1024 images x 16 patches)
# 3. benchmarks/compare_torch.sh PRESET=gpu: our step and evaluation beside PyTorch's
# 4. a 30-epoch CIFAR-10 run of the reference configuration (held-out 10%), with evaluation
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-.device/out}
mkdir -p "$OUT" .device/out
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CLI=.device/bin/bagssl-train
SUM="$OUT/summary.txt"
log() { echo "$*" | tee -a "$SUM"; }
: >"$SUM"
log "# gpu-session $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$SUM"

log "## 1. parity tests and kernel bench"
OUT=.device/out timeout 240 bash scripts/gpu-check.sh 2>&1 | tail -n 60 | tee -a "$SUM"

log "## 2. bagssl-train bench --device cuda (reference config, 300 steps)"
timeout 120 "$CLI" bench --device cuda --steps 300 --warmup 20 --eval-images 10000 --set eval.batch_images=500 \
  2>&1 | tail -n 6 | tee -a "$SUM"
for scale in "model.proj=8192" "train.batch_images=1024" "model.proj=8192 train.batch_images=1024"; do
  sets=(); for kv in $scale; do sets+=(--set "$kv"); done
  log "### scale: $scale"
  timeout 60 "$CLI" bench --device cuda --steps 50 --warmup 5 --eval-images 0 "${sets[@]}" 2>&1 | tail -n 1 | tee -a "$SUM"
done

if [ -f .device/shared/reference/torch_bagssl.py ] && [ -f .device/shared/data/cifar10-train-jpeg.tar.xz ]; then
  log "## 3. side by side with PyTorch (PRESET=gpu)"
  PRESET=gpu BIN="$CLI" REF=.device/shared/reference/torch_bagssl.py DATA=.device/shared/data STEPS=200 \
    BAGSSL_CACHE=/tmp/bagssl-cache timeout 180 bash benchmarks/compare_torch.sh 2>&1 | tail -n 8 | tee -a "$SUM"

  log "## 4. CIFAR-10, reference configuration, 30 epochs, on the GPU"
  rm -rf /tmp/cifar-run && mkdir -p /tmp/cifar && tar xJf .device/shared/data/cifar10-train-jpeg.tar.xz -C /tmp/cifar
  timeout 240 "$CLI" train --config configs/reference.toml --data /tmp/cifar --out /tmp/cifar-run --quiet \
    --set data.cache_dir=/tmp/bagssl-cache 2>&1 | tail -n 8 | tee -a "$SUM"
  cp /tmp/cifar-run/eval.json "$OUT/cifar_eval.json" 2>/dev/null
else
  log "## 3-4 skipped: .device/shared lacks the reference or the CIFAR archive (run cargo xtask device-tests)"
fi
tar czf "$OUT/logs.tar.gz" -C .device out 2>/dev/null
log "# done $(date -u +%FT%TZ)"
