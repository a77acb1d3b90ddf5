#!/usr/bin/env bash
# Any one GPU: the 1B full fine-tune (micro-batch 16) with Inductor's max-autotune against the
# shipped compile, for wmtp one head and torchtitan (issue 20: the 55% MFU target; never tried
# for training). Each variant in its own process, its own output folder.
set -u
T0=$(date +%s)
source bench/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee $OUT/gpu.txt
git log --oneline -1 2>/dev/null | tee $OUT/commit.txt
side() {  # name, side, env...
  local name=$1 s=$2; shift 2
  local left=$(( ${BUDGET:-575} - ($(date +%s) - T0) ))
  [ $left -lt 70 ] && { echo "skip $name: $left s left" | tee -a $OUT/progress.txt; return; }
  echo "$(( $(date +%s) - T0 ))s start $name ($left s) env: $*" | tee -a $OUT/progress.txt
  mkdir -p $OUT/$name
  env "$@" timeout $left python3 -m wmtp.cli bench peers --out $OUT/$name --shape full1b \
    --sides $s --micro-batches 16 > $OUT/$name/log.txt 2>&1
  echo "$(( $(date +%s) - T0 ))s end $name rc=$?" | tee -a $OUT/progress.txt
  grep -E "tok/s|out of memory|Error" $OUT/$name/log.txt | tail -2 | tee -a $OUT/progress.txt
}
side wmtp_default wmtp-1head X=0
side wmtp_autotune wmtp-1head TORCHINDUCTOR_MAX_AUTOTUNE=1
side titan_autotune titan TORCHINDUCTOR_MAX_AUTOTUNE=1
side wmtp_autotune_tma wmtp-1head TORCHINDUCTOR_MAX_AUTOTUNE=1 ENABLE_PERSISTENT_TMA_MATMUL=1
side titan_default titan X=0
