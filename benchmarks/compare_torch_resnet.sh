#!/usr/bin/env bash
# The ResNet steps side by side, same machine, one run: `bagssl-train bench` and the PyTorch
# reference (../shared/reference/torch_bagssl.py --bench-steps, bf16 autocast, channels_last;
# on a GPU also torch.compile), on the same shapes. Not part of CI.
#
#   benchmarks/compare_torch_resnet.sh              # cpu: widths 32-64-128, 16x16 patches, 8 x 64, proj 512
#   PRESET=gpu benchmarks/compare_torch_resnet.sh   # gpu: ResNet-18 (CIFAR stem), 16x16 patches, 16 x 256
#
# Prints one line per side (ms/step, patches/s) and our speed-up over PyTorch's best; BIN, REF,
# DATA, STEPS, CACHE as in compare_torch.sh (PyTorch installed once into $CACHE when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-cpu}
CACHE=${BAGSSL_CACHE:-$HOME/.cache/bagssl}
REF=${REF:-../shared/reference/torch_bagssl.py}
DATA=${DATA:-../shared/data}
BIN=${BIN:-target/release/bagssl-train}
case "$PRESET" in
  cpu) DEVICE=cpu; STEPS=${STEPS:-10}; CONFIG=configs/cifar10-resnet-cpu.toml; N=8; B=64; PROJ=512
    TORCH=(--model smallres --widths 32,64,128); OURS=(--set cpu_precision=bf16); VARIANTS=("eager") ;;
  gpu) DEVICE=cuda; STEPS=${STEPS:-30}; CONFIG=configs/cifar10-resnet18.toml; N=16; B=256; PROJ=512
    TORCH=(--model resnet18); OURS=(--set gpu_precision=bf16 --set 'model.projector=[]' --set model.proj=$PROJ)
    VARIANTS=("eager" "compile") ;;
  *) echo "PRESET must be cpu or gpu" >&2; exit 2 ;;
esac
TORCH_MODULES="torch, torchvision" . benchmarks/torch_env.sh
[ -x "$BIN" ] || cargo build --release -p bagssl-train
echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; preset $PRESET" >&2

ours=$("$BIN" bench --device "$DEVICE" --config "$CONFIG" --steps "$STEPS" --warmup 3 --eval-images 0 \
  --set patches.per_image=$N --set train.batch_images=$B "${OURS[@]}" | tail -n 1)
echo "bagssl  $(echo "$ours" | python3 -c 'import json,sys; d=json.load(sys.stdin); ms, ps, gf = d["ms_per_step"], d["patches_per_s"], d["gflops"]; print(f"{ms:.2f} ms/step, {ps:.0f} patches/s, {gf:.1f} GFLOP/s")')"
best=""
for v in "${VARIANTS[@]}"; do
  extra=(--amp); [ "$v" = compile ] && extra+=(--compile)
  line=$(BAGSSL_CACHE="$CACHE/torch-data" PYTHONUNBUFFERED=1 python3 "$REF" --data "$DATA" --patch 16 \
    --n-patches $N --batch $B --proj $PROJ --bench-steps "$STEPS" --limit 5000 "${TORCH[@]}" "${extra[@]}" \
    | grep '"event": "bench"' | tail -n 1)
  ms=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')
  echo "pytorch $v bf16 autocast: $ms ms/step"
  if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $ms < $best else 1)"; then best=$ms; fi
done
python3 -c "import json; o=json.loads('''$ours'''); print(f'bagssl vs PyTorch best ({$best} ms): {$best / o[\"ms_per_step\"]:.2f}x')"
