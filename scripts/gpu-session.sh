#!/usr/bin/env bash
# One GPU lease, one command: every GPU measurement the CUDA issues ask for, bounded to about
# 9 minutes, with a summary and one archive of logs in $OUT (the device tool brings back at
# most 8 files).
#
# Here (CPU machine) first:  cargo xtask device-tests     (binaries, reference, CIFAR -> .device/)
# Then, with the device tool: run(command="bash scripts/gpu-session.sh", carry=[".device"], timeout_s=600)
#
# 1. scripts/gpu-check.sh: every GPU parity test (skips are failures) + bench_kernels table
# 2. bagssl-train bench --device cuda: the reference configuration over 300 steps (bf16 GEMMs;
#    then TF32), and its scale (8192-wide projector; 1024 images x 16 patches; narrower, smaller)
# 2r. ResNet-18: bench, beside PyTorch (benchmarks/compare_torch_resnet.sh), a short CIFAR-10
#    run and benchmarks/check_torchvision_load.py on its checkpoint (RESNET=0 skips)
# 3. benchmarks/compare_torch.sh PRESET=gpu: our step and evaluation beside PyTorch's
# 4. a 30-epoch CIFAR-10 run of the reference configuration on a held-out 10% (every 10th image
#    of each class), with evaluation
#    (EXTRA_SEEDS="1 2": more seeds of it, trained encoder only)
# 5./6./7. the PyTorch reference on the same split, with and without bf16 autocast, and its loss
#    curve (TORCH_CIFAR=0 skips these)
# 8. scale: wider projector, bigger batch, both; narrower; smaller batch
#
# The steps' own limits add up to ~16 minutes, more than one device command may run (600 s), so
# each is also capped by what is left of BAGSSL_SESSION_BUDGET (default 540 s) and skipped, with a
# line in the summary, when less than 20 s are left; the archive is always written.
set -u
cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
BUDGET=${BAGSSL_SESSION_BUDGET:-540}
OUT=${OUT:-.device/session}
mkdir -p "$OUT" .device/out
# cuBLAS 13 (/usr/local/cuda/lib64, not in the loader cache) and libcuda on LD_LIBRARY_PATH.
. scripts/gpu-env.sh
CLI=.device/bin/bagssl-train
SUM="$OUT/summary.txt"
log() { echo "$*" | tee -a "$SUM"; }
: >"$SUM"
# limit SECONDS: prints min(SECONDS, what is left of the budget less 10 s for the archive), or
# fails (prints nothing) when under 20 s are left. Never prints 0: `timeout 0` means no limit.
limit() {
  local left=$((BUDGET - ($(date +%s) - START) - 10))
  [ "$left" -ge 20 ] || return 1
  echo $(($1 < left ? $1 : left))
}
skipped() { log "skipped: $1 (budget of ${BUDGET}s nearly spent at $(($(date +%s) - START))s)"; }
log "# gpu-session $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$SUM"

log "## 1. parity tests and kernel bench"
# Every later step uses $CLI with ${EXTRA[@]}. Fallback ladder, for a build that has never met a
# GPU: when a parity test fails and a second, earlier build sits in .device/safe (same layout),
# its tests run too and, if they pass, its binary does the measurements; if they fail as well, the
# measurements fall back to TF32 GEMMs (a path an earlier session validated). The summary says which.
EXTRA=()
if t=$(limit 240); then
  OUT=.device/out timeout "$t" bash scripts/gpu-check.sh 2>&1 | tail -n 60 | tee -a "$SUM"
  if [ "${PIPESTATUS[0]}" != 0 ] && [ -s .device/safe/tests.txt ]; then
    log "## 1b. parity FAILED: the earlier build in .device/safe"
    BAGSSL_DEVICE_DIR=.device/safe BAGSSL_BENCH=0 OUT=.device/out-safe timeout "$(limit 120 || echo 20)" \
      bash scripts/gpu-check.sh 2>&1 | tail -n 30 | tee -a "$SUM"
    CLI=.device/safe/bin/bagssl-train
    if [ "${PIPESTATUS[0]}" != 0 ]; then EXTRA=(--set gpu_precision=tf32); fi
    log "measuring with $CLI ${EXTRA[*]}"
  fi
else skipped "gpu-check"; fi

log "## 2. bagssl-train bench --device cuda (reference config, 300 steps; bf16, then tf32)"
if t=$(limit 90); then
  timeout "$t" "$CLI" bench --device cuda --steps 300 --warmup 20 --eval-images 10000 --set eval.batch_images=500 \
    "${EXTRA[@]}" 2>&1 | tail -n 6 | tee -a "$SUM"
else skipped "bench"; fi
if t=$(limit 40); then
  timeout "$t" "$CLI" bench --device cuda --steps 100 --warmup 10 --eval-images 0 --set gpu_precision=tf32 \
    2>&1 | tail -n 1 | tee -a "$SUM"
else skipped "bench tf32"; fi
# The BatchNorm A/B variants (mask read from y, no bf16 copies, a 512-block column grid) are lines of
# bench_kernels' table in step 1 (BnVariant in crates/bagssl-kernels/src/batchnorm.rs), no longer
# environment variables of the library; here the kernel table once more with the PTX (JIT) modules.
if [ ${#EXTRA[@]} = 0 ] && [ -x .device/bin/bench_kernels ] && t=$(limit 60); then
  log "### bench_kernels --quick --ptx (the compute_80 PTX instead of the sm_90a cubins)"
  timeout "$t" .device/bin/bench_kernels --quick --ptx 2>&1 | grep -E '^(bn_|  of which|vicreg|matmul Bf16 x W1|bench_kernels)' \
    | tee -a "$SUM"
fi
# ResNet-18 (issue 12), before the MLP's longer steps: its step, beside PyTorch's eager and
# compiled bf16 steps, a short CIFAR-10 run, and the torchvision load check of its checkpoint.
# RESNET=0 skips it.
if [ "${RESNET:-1}" != 0 ]; then
  log "## 2r. ResNet-18 (CIFAR stem), 16x16 patches, 16 x 256: bench, side by side, short CIFAR-10 run"
  if t=$(limit 60); then
    timeout "$t" "$CLI" bench --device cuda --config configs/cifar10-resnet18.toml --steps 50 --warmup 5 \
      --eval-images 2000 --profile "${EXTRA[@]}" 2>&1 | grep -vE '^\{' | tail -n 30 | tee -a "$SUM"
  else skipped "ResNet-18 bench"; fi
  if [ -f .device/shared/reference/torch_bagssl.py ] && t=$(limit 150); then
    PRESET=gpu BIN="$CLI" REF=.device/shared/reference/torch_bagssl.py DATA=.device/shared/data \
      BAGSSL_CACHE=/tmp/bagssl-cache timeout "$t" bash benchmarks/compare_torch_resnet.sh 2>&1 | tail -n 5 | tee -a "$SUM"
  else skipped "ResNet-18 side by side"; fi
  if [ -f .device/shared/data/cifar10-train-jpeg.tar.xz ] && t=$(limit 150); then
    mkdir -p /tmp/cifar-jpeg && tar xJf .device/shared/data/cifar10-train-jpeg.tar.xz -C /tmp/cifar-jpeg
    timeout "$t" "$CLI" train --config configs/cifar10-resnet18.toml --data /tmp/cifar-jpeg --out /tmp/resnet-run \
      --quiet --set data.cache_dir=/tmp/bagssl-cache --set train.epochs="${RESNET_EPOCHS:-5}" \
      --set eval.untrained=false "${EXTRA[@]}" 2>&1 | tail -n 6 | tee -a "$SUM"
    cp /tmp/resnet-run/eval.json "$OUT/resnet18_eval.json" 2>/dev/null
    if [ -f /tmp/resnet-run/checkpoint.safetensors ] && t=$(limit 40); then
      timeout "$t" python3 benchmarks/check_torchvision_load.py /tmp/resnet-run/checkpoint.safetensors --bin "$CLI" \
        2>&1 | tail -n 2 | tee -a "$SUM"
    fi
  else skipped "ResNet-18 CIFAR-10 run"; fi
fi

if [ -f .device/shared/reference/torch_bagssl.py ] && [ -f .device/shared/data/cifar10-train-jpeg.tar.xz ]; then
  log "## 3. side by side with PyTorch (PRESET=gpu)"
  if t=$(limit 120); then
    PRESET=gpu BIN="$CLI" EXTRA_SETS="${EXTRA[*]}" REF=.device/shared/reference/torch_bagssl.py DATA=.device/shared/data STEPS=200 \
      BAGSSL_CACHE=/tmp/bagssl-cache timeout "$t" bash benchmarks/compare_torch.sh 2>&1 | tail -n 9 | tee -a "$SUM"
  else skipped "compare_torch"; fi

  # One held-out split for both trainers: every 10th image of each class (sorted names) -> test/.
  rm -rf /tmp/split && mkdir -p /tmp/split && tar xJf .device/shared/data/cifar10-train-jpeg.tar.xz -C /tmp/split
  for c in /tmp/split/train/*/; do
    n=$(basename "$c"); mkdir -p "/tmp/split/test/$n"
    ls "$c" | sort | awk 'NR % 10 == 1' | while read -r f; do mv "$c$f" "/tmp/split/test/$n/"; done
  done
  log "split: $(find /tmp/split/train -name '*.jpg' | wc -l) train, $(find /tmp/split/test -name '*.jpg' | wc -l) test"

  log "## 4. CIFAR-10, reference configuration (bf16 GEMMs), 30 epochs, on the GPU"
  if t=$(limit 120); then
    timeout "$t" "$CLI" train --config configs/reference.toml --data /tmp/split --eval-data /tmp/split \
      --out /tmp/cifar-run --quiet --set data.cache_dir=/tmp/bagssl-cache --set train.log_every=25 "${EXTRA[@]}" \
      2>&1 | tail -n 8 | tee -a "$SUM"
    cp /tmp/cifar-run/eval.json "$OUT/cifar_eval.json" 2>/dev/null
    cp /tmp/cifar-run/metrics.jsonl .device/out/cifar_metrics.jsonl 2>/dev/null
  else skipped "CIFAR-10 run"; fi

  for seed in ${EXTRA_SEEDS:-}; do
    log "## 4b. the same, seed $seed (trained encoder only)"
    if t=$(limit 60); then
      timeout "$t" "$CLI" train --config configs/reference.toml --data /tmp/split --eval-data /tmp/split \
        --out "/tmp/cifar-run-$seed" --quiet --set data.cache_dir=/tmp/bagssl-cache --set seed="$seed" \
        --set eval.untrained=false "${EXTRA[@]}" 2>&1 | grep -E 'steps in|trained' | tee -a "$SUM"
    else skipped "CIFAR-10 seed $seed"; fi
  done

  if [ "${TORCH_CIFAR:-1}" = 0 ]; then
    log "## 5-7 skipped (TORCH_CIFAR=0)"
  else
  log "## 5. the PyTorch reference on the same split, 30 epochs, bf16 autocast"
  if t=$(limit 100); then
    PYTHONUNBUFFERED=1 BAGSSL_CACHE=/tmp/torch-split timeout "$t" python3 .device/shared/reference/torch_bagssl.py \
      --data /tmp/split --epochs 30 --amp --eval-every 10 --eval-init 2>&1 | tail -n 5 | tee -a "$SUM"
  else skipped "torch CIFAR-10"; fi

  log "## 6. the PyTorch reference without autocast (TF32), same split: does bf16 matter?"
  if t=$(limit 100); then
    PYTHONUNBUFFERED=1 BAGSSL_CACHE=/tmp/torch-split timeout "$t" python3 .device/shared/reference/torch_bagssl.py \
      --data /tmp/split --epochs 30 --eval-every 10 2>&1 | tail -n 4 | tee -a "$SUM"
  else skipped "torch CIFAR-10 without autocast"; fi

  log "## 7. PyTorch loss curve, first 1000 steps (bf16 autocast), to lay beside metrics.jsonl"
  if t=$(limit 40); then
    BAGSSL_CACHE=/tmp/torch-split timeout "$t" python3 benchmarks/torch_loss_trace.py \
      --ref .device/shared/reference/torch_bagssl.py --data /tmp/split --val-fraction 0 --amp \
      --warmup-steps 350 --total-steps 5250 --steps 1000 --log-every 25 >.device/out/torch_trace_amp.jsonl 2>&1
    tail -n 2 .device/out/torch_trace_amp.jsonl | tee -a "$SUM"
  else skipped "torch loss curve"; fi
  fi
else
  log "## 3-7 skipped: .device/shared lacks the reference or the CIFAR archive (run cargo xtask device-tests)"
fi

log "## 8. scale"
for scale in "model.proj=8192" "train.batch_images=1024" "model.proj=8192 train.batch_images=1024" \
  "model.hidden=1024 model.proj=1024" "train.batch_images=128"; do
  sets=(); for kv in $scale; do sets+=(--set "$kv"); done
  log "### scale: $scale"
  if t=$(limit 45); then
    timeout "$t" "$CLI" bench --device cuda --steps 50 --warmup 5 --eval-images 0 "${sets[@]}" "${EXTRA[@]}" 2>&1 | tail -n 1 | tee -a "$SUM"
  else skipped "bench $scale"; fi
done

tar czf "$OUT/logs.tar.gz" -C .device out 2>/dev/null
log "# done $(date -u +%FT%TZ) after $(($(date +%s) - START)) s"
