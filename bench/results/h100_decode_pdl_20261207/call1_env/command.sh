#!/usr/bin/env bash
# Any one GPU: batch-1 decoding of llama-1b-bench with Inductor's programmatic dependent launch
# (each Triton kernel's prologue overlaps the previous kernel's tail), A B A B, own processes.
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
  env "$@" timeout $left python3 -m wmtp.cli bench decode --flavour llama-1b-bench \
    --n-future-tokens 4 --prompts 3 --new-tokens 256 --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "$(( $(date +%s) - T0 ))s end $name rc=$?" | tee -a $OUT/progress.txt
  { echo "== $name ($*)"; tail -c 3000 /tmp/$name.log; } >> $OUT/logs.txt
  grep -iE "plain|bandwidth" /tmp/$name.log | head -3 | tee -a $OUT/progress.txt
}
one default_a X=0
one pdl_a TORCHINDUCTOR_ENABLE_PDL=1
one default_b X=0
one pdl_b TORCHINDUCTOR_ENABLE_PDL=1
