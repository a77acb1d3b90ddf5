#!/usr/bin/env bash
# Any one GPU: llama2-7b-mtp batch-1 decoding, agreeing heads, shipped (PDL) against 2965dd8.
set -u
T0=$(date +%s)
source bench/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
git log --oneline -1 2>/dev/null | tee $OUT/commit.txt
one() {  # name, env...
  local name=$1; shift
  local left=$(( ${BUDGET:-400} - ($(date +%s) - T0) ))
  [ $left -lt 60 ] && { echo "skip $name: $left s left" | tee -a $OUT/progress.txt; return; }
  echo "$(( $(date +%s) - T0 ))s start $name env: $*" | tee -a $OUT/progress.txt
  env "$@" timeout $left python3 -P -m wmtp.cli bench decode --flavour llama2-7b-mtp \
    --n-future-tokens 4 --prompts 2 --new-tokens 128 --agreeing-heads --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "$(( $(date +%s) - T0 ))s end $name rc=$?" | tee -a $OUT/progress.txt
  { echo "== $name ($*)"; tail -c 3000 /tmp/$name.log; } >> $OUT/logs.txt
  grep -iE "plain|bandwidth" /tmp/$name.log | head -3 | tee -a $OUT/progress.txt
}

[ -n "${TESTS:-}" ] && timeout 300 python3 -m pytest -p no:cacheprovider -q --tb=short -rA -m gpu \
  tests/eval/test_generate.py tests/models/test_kv_cache.py tests/eval/test_speculative.py \
  > $OUT/cuda_tests.log 2>&1
echo "$(( $(date +%s) - T0 ))s cuda tests rc=$?: $(tail -1 $OUT/cuda_tests.log)" | tee -a $OUT/progress.txt
one before_b PYTHONPATH=$PWD/scratch/old:$PYTHONPATH
one shipped_b PYTHONPATH=$PWD:$PYTHONPATH
for p in $PWD $PWD/scratch/old; do
  env PYTHONPATH=$p:$PYTHONPATH python3 -P -c "import wmtp.models.kv_cache as k; print(k.__file__, 'pdl' if hasattr(k, 'DECODE_INDUCTOR_OPTIONS') else 'no pdl')" | tee -a $OUT/progress.txt
done
