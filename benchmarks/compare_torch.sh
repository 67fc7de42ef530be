#!/usr/bin/env bash
# Side by side, same machine, one run: `bagssl-train bench` and the PyTorch reference
# (../shared/reference/torch_bagssl.py --bench-steps) on the same configuration, plus grid
# evaluation throughput and peak memory; prints both and the ratios. Not part of CI.
#
#   benchmarks/compare_torch.sh            # CPU preset: patch 8, 16 x 32 images, 512 wide (issue 3)
#   PRESET=gpu benchmarks/compare_torch.sh # DESIGN §3 reference config on CUDA (16 x 256, 2048 wide)
#
# PRECISION: the GEMM math of both sides, like for like. f32 (the CPU default): our f32 GEMMs
# against PyTorch in f32; bf16 (the GPU default): our bf16 GEMMs (cpu_precision / gpu_precision
# = "bf16") against PyTorch with bf16 autocast (--amp).
#
# PyTorch: used if `python3 -c 'import torch'` works, else installed once (pip --target) into
# $BAGSSL_CACHE/torch-2.11 (default ~/.cache/bagssl). BIN overrides the bagssl-train binary
# (the GPU machines have no Rust toolchain: copy a release build there).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-cpu}
CACHE=${BAGSSL_CACHE:-$HOME/.cache/bagssl}
REF=${REF:-../shared/reference/torch_bagssl.py}
DATA=${DATA:-../shared/data}
case "$PRESET" in
  cpu) DEVICE=cpu; STEPS=${STEPS:-50}; CONFIG=configs/bench-cpu.toml; P=8; N=16; B=32; H=512; Z=512; L=2; EVAL_IMAGES=512; EVAL_BATCH=32
    PRECISION=${PRECISION:-f32} ;;
  gpu) DEVICE=cuda; STEPS=${STEPS:-20}; CONFIG=configs/reference.toml; P=8; N=16; B=256; H=2048; Z=2048; L=2; EVAL_IMAGES=10000; EVAL_BATCH=500
    PRECISION=${PRECISION:-bf16} ;;
  *) echo "PRESET must be cpu or gpu" >&2; exit 2 ;;
esac
case "$PRECISION" in
  f32) AMP= ;;
  bf16) AMP=--amp ;;
  *) echo "PRECISION must be f32 or bf16" >&2; exit 2 ;;
esac
if [ "$DEVICE" = cpu ]; then PREC_SET="--set cpu_precision=$PRECISION"; else PREC_SET="--set gpu_precision=$PRECISION"; fi

if ! python3 -c 'import torch' 2>/dev/null; then
  if [ ! -d "$CACHE/torch-2.11/torch" ]; then
    echo "# installing PyTorch 2.11 into $CACHE/torch-2.11 (once)" >&2
    python3 -m pip install -q --target "$CACHE/torch-2.11" torch==2.11.0 numpy pillow
  fi
  export PYTHONPATH="$CACHE/torch-2.11${PYTHONPATH:+:$PYTHONPATH}"
fi

BIN=${BIN:-target/release/bagssl-train}
if [ ! -x "$BIN" ]; then cargo build --release -p bagssl-train; fi

echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores" >&2
echo "# bagssl: $BIN bench --device $DEVICE --config $CONFIG --steps $STEPS $PREC_SET" >&2
# EXTRA_SETS: more bench arguments, e.g. "--set gpu_precision=tf32".
# shellcheck disable=SC2086
ours=$("$BIN" bench --device "$DEVICE" --config "$CONFIG" --steps "$STEPS" --eval-images "$EVAL_IMAGES" \
  --set eval.batch_images=$EVAL_BATCH $PREC_SET ${EXTRA_SETS:-} | tail -n 1)
echo "# pytorch: $REF --bench-steps $STEPS $AMP (same shapes)" >&2
theirs=$(BAGSSL_CACHE="$CACHE/torch-data" PYTHONUNBUFFERED=1 python3 benchmarks/torch_bench.py --reference "$REF" \
  --data "$DATA" --patch $P --n-patches $N --batch $B --hidden $H --proj $Z --layers $L --steps "$STEPS" \
  --eval-images "$EVAL_IMAGES" $AMP)

OURS="$ours" THEIRS="$theirs" python3 - <<'PY'
import json, os
ours = json.loads(os.environ["OURS"])
lines = [json.loads(l) for l in os.environ["THEIRS"].splitlines() if l.startswith("{")]
t = {l["event"]: l for l in lines}
tb, te, tm = t["bench"], t["eval_bench"], t["memory"]
rows = [
    ("train step (ms)", ours["ms_per_step"], tb["step_ms"], tb["step_ms"] / ours["ms_per_step"]),
    # PyTorch's figure is a mean over its steps; ours above is the median, here the mean.
    ("  mean of steps", ours["ms_per_step_mean"], tb["step_ms"], tb["step_ms"] / ours["ms_per_step_mean"]),
    ("train patches/s", ours["patches_per_s"], tb["patches_per_s"], ours["patches_per_s"] / tb["patches_per_s"]),
    ("eval patches/s", ours["eval_patches_per_s"], te["patches_per_s"], ours["eval_patches_per_s"] / te["patches_per_s"]),
    ("peak memory (MiB)", ours["peak_rss_mib"], tm["peak_rss_mib"], tm["peak_rss_mib"] / ours["peak_rss_mib"]),
]
print(f"device: bagssl {ours['device']} ({ours.get('precision', '?')} GEMMs) | pytorch {tb['device']} "
      f"(torch {tm['torch']}, {tm['threads']} threads, {'bf16 autocast' if tb.get('amp') else 'f32'})")
print(f"{'':20} {'bagssl':>12} {'pytorch':>12} {'bagssl advantage':>18}")
for name, a, b, r in rows:
    print(f"{name:20} {a:12.2f} {b:12.2f} {r:17.2f}x")
print(json.dumps(dict(event="compare", ours=ours, pytorch=dict(bench=tb, eval=te, memory=tm),
                      speedup_step=round(tb["step_ms"] / ours["ms_per_step"], 2),
                      speedup_step_mean=round(tb["step_ms"] / ours["ms_per_step_mean"], 2),
                      speedup_eval=round(ours["eval_patches_per_s"] / te["patches_per_s"], 2))))
PY
