#!/usr/bin/env bash
# Decode throughput, bagssl beside PIL (and torchvision's DataLoader with BAGSSL_TORCH=1) on the
# same files in the same run: CIFAR-sized JPEGs as they are, and an ImageNet-shaped folder
# (shorter side 300-500, made from them) with Resize(S) + CenterCrop(S). Prints a Markdown table.
#
#   benchmarks/decode_throughput.sh IMAGEFOLDER OUT_DIR [IMAGE_SIZE (default 224)]
#
# PIL and numpy are installed once with pip --target into $CACHE/pillow when the system lacks
# them (CACHE defaults to $BAGSSL_CACHE or ~/.cache/bagssl); BAGSSL_TORCH=1 also installs PyTorch
# (benchmarks/torch_env.sh).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n 2,10p "$0"; exit 2; fi
src=$(realpath "$1") out=$2 size=${3:-224}
here=$(dirname "$0")
CACHE=${CACHE:-${BAGSSL_CACHE:-$HOME/.cache/bagssl}}
bin=${BAGSSL_BIN:-target/release/bagssl-train}
[ -x "$bin" ] || cargo build --release -p bagssl-train
if [ "${BAGSSL_TORCH:-0}" = 1 ]; then
  TORCH_MODULES="torch, torchvision" . "$here/torch_env.sh"
elif ! python3 -c "import PIL, numpy" 2> /dev/null; then
  [ -d "$CACHE/pillow/PIL" ] || python3 -m pip install -q --target "$CACHE/pillow" pillow numpy
  export PYTHONPATH="$CACHE/pillow${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$out"
out=$(realpath "$out")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
[ -d "$out/large" ] || python3 "$here/make_large_jpegs.py" "$src" "$out/large" 100

# row DATASET JSON-LINES: one table row per measurement.
row() {
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    for r in d.get("decode", [d]):
        if "threads" in r:
            print("| %s | %s | %d | %d | %.0f | %.0f |" % (sys.argv[1], r.get("decoder", "bagssl"),
                  r["threads"], r["images"], r["images_per_s"], r["images_per_s_per_core"]))
' "$1"
}
echo "CPU: $cpu, $(nproc) cores; PIL $(python3 -c 'import PIL; print(PIL.__version__)')"
echo
echo "| files | decoder | threads | images | images/s | images/s per core |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
"$bin" bench --decode --data "$src" | row "CIFAR-10 32x32"
python3 "$here/decode_pil.py" "$src" | row "CIFAR-10 32x32"
"$bin" bench --decode --data "$out/large" --set data.image_size="$size" | row "300-500 px -> $size"
python3 "$here/decode_pil.py" "$out/large" --image-size "$size" | row "300-500 px -> $size"
