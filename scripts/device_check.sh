#!/usr/bin/env bash
# Device check of the GPU path (issue 15): one command, under 8 minutes, on a CUDA machine.
#
#   1. the kernel tests on CUDA (tests/test_triton_kernels.py: the same tests the CPU suite runs
#      under Triton's interpreter, here on the GPU, plus the tiny engine on the Triton path);
#   2. scripts/device_check.py: greedy parity of the engine vs transformers on a random-weight
#      ~1B Llama in bf16 (and fp32), the paged decode kernel vs SDPA on gathered K/V (batch
#      1/32/128 x context 1k/8k), engine decode tok/s at batch 1/32/128 on a random-weight
#      Llama-3-8B-shaped model with and without CUDA graphs, and how much of a host-tier
#      prefetch hides behind decode steps.
#   Output: the tables on stdout; kernel_tests.txt and device_check.json under $OUT (default
#   out/device_check). Exit 0 when everything passed.
#
# The GPU machine has Python 3.12, torch, triton and transformers, but no pydantic (and no
# pytest may be assumed) and no registry. What is missing travels as wheels with the working
# tree (the tree and carried paths: 64 MiB in all; these wheels are ~4.5 MiB). On this (CPU)
# machine, once:
#
#   rm -rf .device_wheels && mkdir .device_wheels
#   .venv/bin/pip download --no-deps --python-version 3.12 --only-binary=:all: \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .device_wheels \
#       pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions \
#       pytest pluggy iniconfig pygments packaging
#
# (.device_wheels/ is git-ignored: never commit wheels. pydantic-core must be the version the
# pydantic wheel pins; pydantic needs typing-extensions >= 4.16, newer than some torch installs.)
# Then run it on the device with the wheel folder carried:
#
#   run(command="bash scripts/device_check.sh", carry=[".device_wheels"], timeout_s=540)
#
# This script installs the wheels with `pip install --no-index --no-deps --target .device_pydeps`
# (unzipping them if pip is absent) and puts that folder first on PYTHONPATH; the repository
# itself is used from the working tree (PYTHONPATH=.), nothing is installed into the system.
# Budget: kernel tests ~1-2 min (Triton compiles each kernel variant once), device_check.py
# ~3-5 min (the 8B-shaped model's random weights are made on the GPU).
# Options: DEVICE_CHECK_ONLY=parity,kernel,engine,prefetch selects sections; SKIP_TESTS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${AGENTRT_DEVICE_WHEELS:-.device_wheels}
DEPS=.device_pydeps
OUT=${OUT:-out/device_check}
mkdir -p "$OUT"
start=$(date +%s)

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "device_check: no CUDA device visible to torch" >&2
    exit 3
fi

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    rm -rf "$DEPS"
    if ! $PY -m pip install --quiet --no-index --no-deps --target "$DEPS" "$WHEELS"/*.whl; then
        echo "device_check: pip unavailable or failed; unzipping the wheels instead" >&2
        rm -rf "$DEPS" && mkdir -p "$DEPS"
        for w in "$WHEELS"/*.whl; do $PY -m zipfile -e "$w" "$DEPS"; done
    fi
    export PYTHONPATH="$PWD/$DEPS${PYTHONPATH:+:$PYTHONPATH}"
elif ! $PY -c "import pydantic, pytest" 2>/dev/null; then
    echo "device_check: pydantic/pytest missing and no wheels in $WHEELS (see this script's header)" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export AGENTRT_TEST_TIMEOUT=${AGENTRT_TEST_TIMEOUT:-120}
unset TRITON_INTERPRET

$PY - <<'EOF'
import torch, triton, transformers, pydantic
print(f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
      f"transformers {transformers.__version__} | pydantic {pydantic.__version__}")
EOF

rc_tests=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    echo "=== kernel tests on CUDA ==="
    timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tee "$OUT/kernel_tests.txt"
    rc_tests=${PIPESTATUS[0]}
fi

echo "=== device_check.py ($(( $(date +%s) - start )) s so far) ==="
left=$(( 470 - ($(date +%s) - start) )); [ "$left" -lt 120 ] && left=120
timeout "$left" $PY scripts/device_check.py --out "$OUT" \
    --only "${DEVICE_CHECK_ONLY:-parity,kernel,engine,prefetch}"
rc_check=$?

echo "device_check: kernel tests rc=$rc_tests, device_check.py rc=$rc_check, $(( $(date +%s) - start )) s in all"
[ "$rc_tests" = 0 ] && [ "$rc_check" = 0 ]
