#!/usr/bin/env bash
# The GPU step of the recipe, as run on the device machine (one H100) from the repository root:
#   carry .device_data (train.bin, heldout.bin from train_tokenizer.py); the shards come back under $OUT.
# Then, on any machine: python models/recipe/assemble.py --shards OUT/kjv-llama-18m --model-dir models/kjv-llama-18m
set -euo pipefail
OUT=${OUT:-out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
PYTHONPATH=$PWD python3 models/recipe/train.py --data .device_data --tokenizer-dir models/kjv-llama-18m \
    --out "$OUT/kjv-llama-18m" "$@" 2>&1 | grep -v "Writing model shards"
ls -la "$OUT/kjv-llama-18m"
