#!/usr/bin/env bash
# Runs the GPU test executables on a GPU machine (no Rust toolchain there).
#
# On the CPU machine first:   cargo xtask device-tests      (builds them into .device/bin)
# then on the GPU machine, from the repository root (the copied working tree):
#                             bash scripts/gpu-check.sh [TEST-FILTER]
# Every GPU test fails instead of skipping (BAGSSL_REQUIRE_GPU=1). Prints one line per
# executable and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
export BAGSSL_REPO_ROOT="$PWD"
export BAGSSL_REQUIRE_GPU=1
# cuBLAS 13 (/usr/local/cuda/lib64, not in the loader cache) and libcuda on LD_LIBRARY_PATH.
. scripts/gpu-env.sh
export RUST_BACKTRACE=1

# BAGSSL_DEVICE_DIR: where bin/ and tests.txt are (default .device; a second build can sit beside).
DEV=${BAGSSL_DEVICE_DIR:-.device}
if [ ! -s "$DEV/tests.txt" ]; then
  echo "no $DEV/tests.txt: run \`cargo xtask device-tests\` on the CPU machine and carry .device" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

out=${OUT:-.device/out}
mkdir -p "$out"
# Logs of an earlier run (other executable hashes) would be counted in parity.txt below.
rm -f "$out"/*.log "$out/parity.txt" "$out/bench_kernels.txt"
passed=0
failed=0
while read -r name; do
  [ -n "$name" ] || continue
  exe="$DEV/bin/$name"
  start=$(date +%s%N)
  # --nocapture: the OK / NOT OK parity lines and "skipped:" lines show in the log.
  if "$exe" --test-threads=4 --nocapture "$@" >"$out/$name.log" 2>&1; then
    status=ok
    passed=$((passed + 1))
  else
    status=FAILED
    failed=$((failed + 1))
  fi
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%-8s %-48s %7d ms  %s\n' "$status" "$name" "$ms" \
    "$(grep -E '^test result' "$out/$name.log" | tail -n 1)"
  if [ "$status" = FAILED ]; then
    grep -E 'NOT OK|panicked|FAILED|error' "$out/$name.log" | head -n 40
  fi
done <"$DEV/tests.txt"
if [ -x "$DEV/bin/bench_kernels" ] && [ "${BAGSSL_BENCH:-1}" != 0 ]; then
  echo "== bench_kernels (BAGSSL_BENCH=0 skips)"
  timeout 300 "$DEV/bin/bench_kernels" 2>&1 | tee "$out/bench_kernels.txt"
fi
grep -h -E '^(OK|NOT OK) ' "$out"/*.log >"$out/parity.txt" 2>/dev/null
n_ok=$(grep -c '^OK ' "$out/parity.txt" 2>/dev/null)
n_bad=$(grep -c '^NOT OK' "$out/parity.txt" 2>/dev/null)
echo "parity lines: ${n_ok:-0} OK, ${n_bad:-0} NOT OK (all in $out/parity.txt)"
echo "gpu-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
