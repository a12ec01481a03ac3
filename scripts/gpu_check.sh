#!/usr/bin/env bash
# The GPU checks, in one script, for a machine with a CUDA GPU and CuPy but no network.
#
#   bash scripts/gpu_check.sh prepare   # here, with network: wheels into .whl/, MNIST into .mnist/
#   bash scripts/gpu_check.sh           # there: GPU tests, the GPU benchmark, a default run
#
# Results go under $OUT (default ./gpu-out): nvidia-smi.txt, backends.txt, pytest-gpu.txt,
# bench-gpu.json/.txt and train-default-cupy.txt. .whl/ and .mnist/ are ignored by git; carry
# them to the GPU machine alongside the checkout.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.mnist/' .git/info/exclude 2>/dev/null || echo '/.mnist/' >> .git/info/exclude
    rm -rf .whl && mkdir -p .whl .mnist
    for py in 3.12; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl array-api-compat pydantic pydantic-core \
            annotated-types typing-extensions typing-inspection safetensors threadpoolctl \
            matplotlib pillow contourpy cycler fonttools kiwisolver pyparsing python-dateutil \
            six packaging hypothesis sortedcontainers
    done
    python3 -c "from trainer.data.dataset import load_dataset; print(load_dataset(quiet=True).path)" \
        | xargs -I{} sh -c 'cp {}/*.gz .mnist/'
    du -sh .whl .mnist
    exit 0
fi

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .mnist ] && export TRAINER_DATA_DIR="$PWD/.mnist"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m trainer backends 2>&1 | tee "$OUT/backends.txt"
# the modules with backend-parametrized tests (the others need packages the GPU box lacks)
python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_parity.py tests/test_step.py \
    tests/test_metrics.py tests/test_recipe.py 2>&1 | tee "$OUT/pytest-gpu.txt"
python3 -m trainer bench --backends cupy,numpy --batch-sizes 32,128,512,4096 --epochs 3 \
    --out "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt"
python3 -m trainer train configs/default.json --backend cupy --run-dir /tmp/run-cupy --quiet \
    2>&1 | tee "$OUT/train-default-cupy.txt"
