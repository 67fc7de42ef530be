# Sourced by the side-by-side scripts: makes `import torch` work (and torchvision, with
# TORCH_MODULES="torch, torchvision"), installing PyTorch 2.11 once with pip --target into
# $CACHE/torch-2.11 when the system lacks it.
if ! python3 -c "import ${TORCH_MODULES:-torch}" 2>/dev/null; then
  if [ ! -d "$CACHE/torch-2.11/torch" ]; then
    echo "# installing PyTorch 2.11 into $CACHE/torch-2.11 (once)" >&2
    python3 -m pip install -q --target "$CACHE/torch-2.11" torch==2.11.0 torchvision numpy pillow
  fi
  export PYTHONPATH="$CACHE/torch-2.11${PYTHONPATH:+:$PYTHONPATH}"
fi
