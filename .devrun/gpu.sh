#!/bin/bash
# GPU checks and benchmarks of the statistics' backward passes; one call.
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
date
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_stat_autograd.py tests/test_cuda.py \
  -k "cuda and not search and not replayed and not graphed and not weight_step" 2>&1 | tee $OUT/pytest.log | tail -15
date
timeout 200 python3 benchmarks/gpu.py --sections train,inference --rounds 5 --cpu-rounds 0 --out $OUT/gpu_train.md --json $OUT/gpu_train.json 2>&1 | grep -v Warning | tail -25
date
timeout 170 python3 benchmarks/gpu.py --sections search --no-bf16 --rounds 3 --cpu-rounds 0 --out $OUT/gpu_search.md --json $OUT/gpu_search.json 2>&1 | grep -v Warning | tail -25
date
