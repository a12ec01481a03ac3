#!/usr/bin/env bash
# The GPU checks, in one script, for a machine with a CUDA GPU and CuPy but no network.
#
#   bash scripts/gpu_check.sh prepare   # here, with network: wheels into .whl/, MNIST into .mnist/
#   bash scripts/gpu_check.sh           # there: GPU tests, the GPU benchmark, a default run
#
# Results go under $OUT (default ./gpu-out), nine files: nvidia-smi.txt, backends.txt,
# pytest-gpu.txt, bench-gpu.json, bench-gpu.txt, train-default-cupy.txt, metrics.json,
# train-cluster-cupy.txt and metrics-cluster.json (a batch on a Dask cluster of one GPU worker
# on this machine: the runs ask for the GPU and train on it with CuPy); and
# where the machine's JAX sees the GPU (the GPU image has jax with its CUDA plugin: nothing to
# carry) the jax backend beside cupy: its GPU tests in pytest-gpu.txt, its rows in the
# benchmark, and train-default-jax.txt with metrics-jax.json.
# .whl/ and .mnist/ are ignored by git: carry them to the GPU machine with the checkout. Every
# stage has a time limit and any failure stops the script with a non-zero exit; running it again
# on the same machine starts afresh (a new run directory, the results replaced).
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY_LIMIT_MB=64
# What the GPU image lacks of trainer's and its tests' dependencies (it has NumPy, CuPy, Typer,
# rich, Pillow, matplotlib, safetensors, threadpoolctl, pytest, hypothesis; device/KINDS.md):
# array-api-compat, and pydantic with its parts; for the cluster check, Dask's distributed and
# what of its dependencies the image lacks.
WHEELS=(array-api-compat pydantic pydantic-core annotated-types typing-inspection
        distributed dask tornado tblib zict partd locket)
GPU_PYTHON=3.12  # the GPU image's Python
PYTHON=${PYTHON:-python3}  # here: one that has trainer's dependencies (there: the image's python3)

if [ "${1:-}" = "prepare" ]; then
    for folder in /.whl/ /.mnist/; do
        grep -qx "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
    done
    rm -rf .whl .mnist && mkdir -p .whl .mnist
    timeout 300 "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
        --python-version "$GPU_PYTHON" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    for wheel in "${WHEELS[@]}"; do
        if ! ls .whl/"${wheel//-/_}"-*.whl >/dev/null 2>&1; then
            echo "error: no wheel of $wheel in .whl/" >&2
            exit 1
        fi
    done
    data=$(timeout 600 "$PYTHON" -c '
import sys
from trainer import TrainerError, load_dataset
try:
    print(load_dataset().path)
except TrainerError as e:
    sys.exit(f"error: MNIST for the GPU machine: {e}")')
    for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
            t10k-labels-idx1-ubyte; do
        cp "$data/$name.gz" .mnist/  # set -e: a missing file stops here, loudly
    done
    size_mb=$(du -smc .whl .mnist | tail -n 1 | cut -f 1)
    echo "carry .whl and .mnist: ${size_mb} MB ($(ls .whl | wc -l) wheels, MNIST from $data)"
    if [ "$size_mb" -ge "$CARRY_LIMIT_MB" ]; then
        echo "error: the carry set is ${size_mb} MB, over the ${CARRY_LIMIT_MB} MB limit" >&2
        exit 1
    fi
    exit 0
fi

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=$(mktemp -d)
if ls .whl/*.whl >/dev/null 2>&1; then
    timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" .whl/*.whl
    export PYTHONPATH=$site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .mnist ]; then
    export TRAINER_DATA_DIR="$PWD/.mnist"
fi

stage() {  # stage SECONDS NAME.txt COMMAND...: run it under a limit, its output into $OUT
    local seconds=$1 log=$OUT/$2
    shift 2
    echo "::: $* (limit ${seconds} s)"
    timeout "$seconds" "$@" 2>&1 | tee "$log"
}

stage 30 nvidia-smi.txt nvidia-smi
stage 120 backends.txt "$PYTHON" -m trainer backends
# the modules with backend-parametrized and GPU tests (the sweep tests need Optuna, which the
# GPU image lacks)
stage 420 pytest-gpu.txt "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider \
    tests/test_parity.py tests/test_step.py tests/test_metrics.py tests/test_recipe.py \
    tests/test_cupy_kernels.py
# the jax backend too, where JAX sees a GPU (0 where jax is missing or sees none)
jax_gpus=$(timeout 120 "$PYTHON" -c 'import jax
try:
    print(len(jax.devices("gpu")))
except RuntimeError:
    print(0)' 2>/dev/null || echo 0)
echo "::: jax sees ${jax_gpus} GPU(s)"
bench_backends=cupy,numpy
if [ "$jax_gpus" -gt 0 ]; then
    bench_backends=cupy,jax,numpy
fi
stage 420 bench-gpu.txt "$PYTHON" -m trainer bench --backends "$bench_backends" \
    --batch-sizes 32,512,4096 --epochs 3 --out "$OUT/bench-gpu.json"
run_dir=$(mktemp -d)/run  # new every time: a second run on a warm machine works too
stage 300 train-default-cupy.txt "$PYTHON" -m trainer train configs/default.json \
    --backend cupy --run-dir "$run_dir" --quiet
cp "$run_dir/metrics.json" "$OUT/metrics.json"
if [ "$jax_gpus" -gt 0 ]; then
    run_dir=$(mktemp -d)/run
    stage 300 train-default-jax.txt "$PYTHON" -m trainer train configs/default.json \
        --backend jax --device cuda --run-dir "$run_dir" --quiet
    cp "$run_dir/metrics.json" "$OUT/metrics-jax.json"
fi
# a batch on a Dask cluster on loopback: one worker declaring the GPU (as `dask cuda worker`
# would), each run a task that asks for it (resources GPU=1) and trains with CuPy
cluster=$(mktemp -d)
"$PYTHON" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port 0 \
    --dashboard-address 127.0.0.1:0 --scheduler-file "$cluster/s.json" >"$cluster/log" 2>&1 &
pids=$!
trap 'kill $pids 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$cluster/s.json" ] && break; sleep 0.1; done
address=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' \
    "$cluster/s.json")
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$PYTHON" -m distributed.cli.dask_worker \
    "$address" --host 127.0.0.1 --nthreads 1 --dashboard-address 127.0.0.1:0 \
    --resources GPU=1 >>"$cluster/log" 2>&1 &
pids="$pids $!"
timeout 120 "$PYTHON" -c 'import sys; from distributed import Client
with Client(sys.argv[1], timeout=30) as c: c.wait_for_workers(1, timeout=90)' "$address"
stage 300 train-cluster-cupy.txt "$PYTHON" -m trainer train configs/default.json \
    configs/hidden-64.json --seeds 2 --epochs 2 --backend cupy --cluster "$address" \
    --run-dir "$cluster/group" --quiet
cp "$cluster/group/default-seed0/metrics.json" "$OUT/metrics-cluster.json"
echo "::: done: $(ls "$OUT" | tr '\n' ' ')"
