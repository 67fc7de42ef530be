# Sourced by scripts/gpu-check.sh and scripts/gpu-session.sh on the GPU machine: puts the CUDA 13
# libraries that cudarc opens at run time on LD_LIBRARY_PATH. libcuda is in the loader cache or in
# /usr/local/nvidia/lib64; cuBLAS 13 in /usr/local/cuda/lib64, which is not in the loader cache.
# Where that directory lacks libcublas.so.13, the first copy found under the usual roots (e.g.
# the nvidia-cublas wheel beside PyTorch) is used instead, so the tests do not fail on a path.
bagssl_cublas_dir=/usr/local/cuda/lib64
if [ ! -e "$bagssl_cublas_dir/libcublas.so.13" ]; then
  found=$(find /usr/local/cuda /usr/local/cuda-13* /opt /usr/lib/x86_64-linux-gnu -name 'libcublas.so.13' \
    -print -quit 2>/dev/null)
  if [ -n "$found" ]; then
    bagssl_cublas_dir=$(dirname "$found")
  else
    echo "warning: libcublas.so.13 not found (looked in /usr/local/cuda/lib64, /usr/local/cuda*, /opt)" >&2
  fi
fi
export LD_LIBRARY_PATH="$bagssl_cublas_dir:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
