#!/usr/bin/env bash
# Any one GPU: Inductor options aimed at the fused elementwise kernels (coordinate-descent tuning,
# mixed-order reductions, programmatic dependent launch) on the 1B full fine-tune, micro-batch 16.
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
  local dir=/tmp/peers/$name; mkdir -p $dir
  env "$@" timeout $left python3 -m wmtp.cli bench peers --out $dir --shape full1b \
    --sides $s --micro-batches 16 > $dir/log.txt 2>&1
  echo "$(( $(date +%s) - T0 ))s end $name rc=$?" | tee -a $OUT/progress.txt
  grep -E "tok/s|out of memory|Error" $dir/log.txt | tail -2 | tee -a $OUT/progress.txt
  { echo "== $name ($*)"; tail -c 6000 $dir/log.txt; } >> $OUT/logs.txt
  { echo "{\"variant\": \"$name\", \"env\": \"$*\", \"rows\": "; cat $dir/full1b.json 2>/dev/null || echo null; echo "}"; } >> $OUT/rows.jsonl
}

side wmtp_default wmtp-1head X=0
side wmtp_coord wmtp-1head TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
side wmtp_mixorder wmtp-1head TORCHINDUCTOR_MIX_ORDER_REDUCTION=1
side wmtp_pdl wmtp-1head TORCHINDUCTOR_ENABLE_PDL=1
side wmtp_all wmtp-1head TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 TORCHINDUCTOR_MIX_ORDER_REDUCTION=1 TORCHINDUCTOR_ENABLE_PDL=1
side titan_all titan TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 TORCHINDUCTOR_MIX_ORDER_REDUCTION=1 TORCHINDUCTOR_ENABLE_PDL=1
side titan_default titan X=0
