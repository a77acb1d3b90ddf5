#!/usr/bin/env bash
# A/B on one GPU, same call: the 1B step (llama-1b-bench, one head, micro-batch 16, compiled) with
# the gradient clipping as its own pass (ba41a8e, scratch/old) and folded into the fused AdamW
# step (this checkout), in the order old, new, new, old
set -u
T0=$(date +%s)
source bench/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
python3 -c "import sys, tomli_w; from wmtp.bench.suite import suite_recipe_data as r
sys.stdout.write(tomli_w.dumps(r('llama-1b-bench', 2048, micro_batch=16)))" > /tmp/full1b.toml
grep -n "grad_clip\|micro_batch\|compile" /tmp/full1b.toml | tee $OUT/recipe_lines.txt
i=0
for when in old new new old; do
  i=$((i+1)); path=$PYTHONPATH
  [ $when = old ] && path=$PWD/scratch/old:$path
  echo "$(( $(date +%s) - T0 ))s run $i $when" | tee -a $OUT/progress.txt
  env PYTHONPATH=$path python3 -P -c "import wmtp; print(wmtp.__file__)" | tee -a $OUT/progress.txt
  timeout 120 env PYTHONPATH=$path python3 -P -m wmtp.cli bench step /tmp/full1b.toml --warmup 3 \
    --repeats 15 --out $OUT/run${i}_$when > $OUT/log${i}_$when.txt 2>&1
  echo "rc=$?" | tee -a $OUT/progress.txt
  grep -E "tokens/s|MFU" $OUT/log${i}_$when.txt | tail -3
done
echo "$(( $(date +%s) - T0 ))s done" | tee -a $OUT/progress.txt
