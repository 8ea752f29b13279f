#!/bin/bash
# After the bf16 change: what the block keeps under autocast, on the GPU.
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 100 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_stat_autograd.py tests/test_cuda.py \
  -k "cuda and (low_precision or train_on_cuda)" 2>&1 | tee $OUT/pytest.log | tail -6
date
timeout 150 python3 benchmarks/gpu.py --sections train --rounds 5 --cpu-rounds 0 --out $OUT/gpu_train.md --json $OUT/gpu_train.json 2>&1 | grep -v Warning | tail -12
date
