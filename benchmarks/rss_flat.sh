#!/usr/bin/env bash
# Anonymous memory against dataset size: trains the same short run on a tenth of an ImageFolder
# and on all of it (symlinked subsets, a fixed small evaluation set apart from both) and prints,
# per run, the peak RssAnon (heap: what must not grow with the data) and the peak RssFile (mapped
# cache pages, which the kernel may drop and re-read), sampled from /proc every 20 ms.
#
#   benchmarks/rss_flat.sh IMAGEFOLDER OUT_DIR [--set KEY=VALUE ...]
#
# Each size runs three times: decoding into an empty cache, mapping that cache, and with
# data.cache_dir="off" (the store in anonymous memory, for contrast).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n 2,10p "$0"; exit 2; fi
src=$(realpath "$1") out=$2
shift 2
bin=${BAGSSL_BIN:-target/release/bagssl-train}
[ -x "$bin" ] || cargo build --release -p bagssl-train
mkdir -p "$out"
out=$(realpath "$out")
grep -m1 'model name' /proc/cpuinfo >&2

# subset NAME FIRST COUNT: COUNT images per class from index FIRST of each sorted class folder.
subset() {
  local dir="$out/$1"
  [ -d "$dir" ] && return
  rm -rf "$dir.tmp"
  for c in "$src"/*/; do
    c=$(basename "$c")
    mkdir -p "$dir.tmp/$c"
    # sed, not head: an early exit upstream would be a SIGPIPE failure under pipefail.
    find "$src/$c" -maxdepth 1 -type f | sort | sed -n "$(($2 + 1)),$(($2 + $3))p" \
      | xargs -r -d '\n' ln -s -t "$dir.tmp/$c"
  done
  mv "$dir.tmp" "$dir"
}
per_class=$(find "$src/$(ls "$src" | head -1)" -maxdepth 1 -type f | wc -l)
eval_n=50
subset eval 0 "$eval_n"
subset small "$eval_n" $(((per_class - eval_n) / 10))
subset big "$eval_n" $((per_class - eval_n))

# measure LABEL ARGS...: runs the binary, prints "LABEL peak_RssAnon_MiB peak_RssFile_MiB seconds".
measure() {
  local label=$1
  shift
  local t0=$SECONDS
  "$bin" "$@" > "$out/$label.log" 2>&1 &
  local pid=$! anon=0 file=0
  while kill -0 "$pid" 2> /dev/null; do
    read -r a f < <(awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{print a+0, f+0}' "/proc/$pid/status" 2> /dev/null || echo "0 0")
    ((a > anon)) && anon=$a
    ((f > file)) && file=$f
    sleep 0.02
  done
  wait "$pid" || { echo "$label failed, see $out/$label.log" >&2; exit 1; }
  printf '| %s | %d | %.1f | %.1f | %d |\n' "$label" "$(find -L "$out/${label%% *}" -type f | wc -l)" \
    "$(echo "$anon / 1024" | bc -l)" "$(echo "$file / 1024" | bc -l)" $((SECONDS - t0))
}

run_args() {
  echo train -c configs/cifar10.toml --data "$out/$1" --eval-data "$out/eval" --quiet \
    --set train.epochs=1 --set eval.untrained=false --set eval.probe_epochs=5
}
echo "| run | images | peak RssAnon MiB | peak RssFile MiB | seconds |"
echo "| --- | ---: | ---: | ---: | ---: |"
for size in small big; do
  rm -rf "$out/cache-$size"
  # shellcheck disable=SC2046
  measure "$size decode" $(run_args $size) --set data.cache_dir="$out/cache-$size" --out "$out/run-$size-1" "$@"
  # shellcheck disable=SC2046
  measure "$size mapped" $(run_args $size) --set data.cache_dir="$out/cache-$size" --out "$out/run-$size-2" "$@"
  # shellcheck disable=SC2046
  measure "$size in-memory" $(run_args $size) --set data.cache_dir=off --out "$out/run-$size-3" "$@"
done
