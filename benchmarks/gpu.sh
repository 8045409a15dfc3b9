#!/usr/bin/env bash
# ckptlab's GPU checks in one run: the CUDA tests, then the realistic-model benchmark with the
# models on the GPU (`python -m benchmarks models --device cuda`).
#
# usage: benchmarks/gpu.sh OUTDIR [options for `python -m benchmarks models`]
#   run from the repository root, on a machine with a CUDA device; PYTHON (default python3)
#   must import torch with CUDA. Writes OUTDIR/cuda-tests.txt, OUTDIR/gpu-bench.txt and
#   OUTDIR/gpu.json. Default benchmark options: --checkpoints 100 --memory-checkpoints
#   100,1000 (the CPU's full run takes about 18 minutes on 2 cores); options given replace
#   them.
#
# A GPU machine without internet: put wheels of what its python lacks in ./.whl and they are
# installed into /tmp/site first. For a Python 3.12 image that has torch, numpy, xarray,
# scikit-learn, matplotlib, click, tqdm and safetensors, that is (fetched elsewhere with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 ...`, about 14 MB): zarr numcodecs donfig google-crc32c dask
# distributed tornado tblib zict partd locket ruptures.
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTDIR [options for python -m benchmarks models]}
shift
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" - <<'EOF' || exit 2
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
import ckptlab, dask, distributed, zarr, xarray  # noqa: F401  (every dependency imports)
EOF
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/analysis/test_cuda.py tests/models/test_models.py \
    -k cuda 2>&1 | tee "$out/cuda-tests.txt" || status=1
[ $# -gt 0 ] || set -- --checkpoints 100 --memory-checkpoints 100,1000
"$PY" -m benchmarks models --device cuda --json "$out/gpu.json" "$@" 2>&1 \
    | tee "$out/gpu-bench.txt" || status=1
exit $status
