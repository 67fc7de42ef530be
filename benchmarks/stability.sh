#!/usr/bin/env bash
# Recipe stability: trains one configuration from several seeds (each its own seeded split) and
# prints, per run, what the collapse monitor saw and how the representation evaluates, as Markdown.
#
#   benchmarks/stability.sh CONFIG DATA OUT_DIR "SEEDS" [--set KEY=VALUE ...]
#
# e.g. benchmarks/stability.sh configs/cifar10.toml data/train runs/stability "0 1 2 3 4" \
#        --set cpu_precision=bf16
# A run directory already holding eval.json is reused. A run counts as collapsed when the monitor
# logged a collapse event (docs/DEFINITIONS.md §12) or when training made the representation worse
# than the untrained encoder's (trained kNN below untrained), the signature of the partial
# collapses of benchmarks/RESULTS.md.
set -euo pipefail
if [ $# -lt 4 ]; then sed -n 2,12p "$0"; exit 2; fi
config=$1 data=$2 out=$3 seeds=$4
shift 4
bin=${BAGSSL_BIN:-target/release/bagssl-train}
[ -x "$bin" ] || cargo build --release -p bagssl-train
mkdir -p "$out"
for s in $seeds; do
  run="$out/seed$s"
  if [ ! -s "$run/eval.json" ]; then
    rm -rf "$run"
    echo "$(date +%T) seed $s" >&2
    "$bin" train -c "$config" --data "$data" --set seed="$s" "$@" --out "$run" --quiet > "$out/seed$s.log" 2>&1
  fi
done

python3 - "$out" $seeds <<'PY'
import json, sys, pathlib
out, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
print("| seed | final loss | variance term | min rank h / z (from epoch 2) | min std h | collapse events | kNN untrained -> trained | linear |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
bad = 0
for s in seeds:
    run = out / f"seed{s}"
    lines = [json.loads(l) for l in open(run / "metrics.jsonl")]
    steps = [l for l in lines if l.get("event") == "step"]
    warm = [l for l in steps if l["epoch"] >= 1] or steps
    events = sum(1 for l in lines if l.get("event") == "collapse")
    ev = json.load(open(run / "eval.json"))
    t, u = ev["trained"], ev.get("untrained") or {}
    tail = steps[-max(1, len(steps) // 20):]
    loss = sum(l["loss"] for l in tail) / len(tail)
    var = sum(l["variance"] for l in tail) / len(tail)
    worse = bool(u) and t["knn"] < u["knn"]
    bad += events > 0 or worse
    uk = f"{100 * u['knn']:.1f} -> " if u else ""
    print(f"| {s} | {loss:.2f} | {var:.3f} | {min(l['embedding_rank'] for l in warm):.1f} / "
          f"{min(l['projection_rank'] for l in warm):.1f} | {min(l['embedding_std_min'] for l in warm):.3f} | "
          f"{events} | {uk}{100 * t['knn']:.1f} | {100 * t['linear']:.1f} |")
print(f"\n{bad} of {len(seeds)} runs collapsed (final loss and variance term: means over the last 5% of logged steps).")
PY
