#!/bin/bash
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_stat_autograd.py -k "cuda or three_maps" 2>&1 | tail -3
timeout 90 python3 benchmarks/gpu.py --sections inference --rounds 3 --cpu-rounds 0 --out $OUT/gpu_inf.md --json $OUT/gpu_inf.json 2>&1 | grep -v Warning | tail -8
date
