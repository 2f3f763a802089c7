#!/usr/bin/env bash
# Every GPU check of the open GPU work in one device call (about 10 minutes on an H100/H200): the static
# steps' tests with their CUDA graphs recorded, our plain and speculative decoding per backend against
# transformers' dynamic and static caches, verification cost per backend against context and tree size,
# and the long-document and captioning speedups predicted from GPU step costs. Logs land in $OUT.
#
# The GPU image has transformers 5.17; specdecode needs >= 5.24, which travels as a wheel. Here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0
# Then the device call: command `bash scripts/gpu_session.sh`, carry [".whl"], timeout_s 600.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
timeout 120 env SPECDECODE_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_static_steps.py \
    tests/test_grouped_attention.py \
    2>&1 | tee "$OUT/static_steps.log"
timeout 180 python3 scripts/gpu_check.py --dtype bf16 --rounds 2 --new-tokens 64 2>&1 | tee "$OUT/gpu_check.log"
timeout 120 python3 scripts/gpu_tree_attention.py --contexts 1024,8192,32768 --nodes 16,64 --rounds 3 \
    2>&1 | tee "$OUT/tree_attention.log"
timeout 90 python3 scripts/gpu_predict.py --models 1.5b,8b --contexts 8192,32768,131072 \
    2>&1 | tee "$OUT/predict_long.log"
timeout 40 python3 scripts/gpu_predict.py --models vl-3b,vl-7b --contexts 1024 --drafters model --acceptance model=0.4 \
    2>&1 | tee "$OUT/predict_captions.log"
