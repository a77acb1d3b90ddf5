#!/usr/bin/env bash
# 1B full fine-tune, micro-batches 16 and 32, every side in its own process, one H200
set -u
T0=$(date +%s)
source bench/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
git log --oneline -1 > $OUT/commit.txt 2>/dev/null
for s in wmtp-1head titan wmtp-1head+float8 titan+float8 hf+liger; do
  left=$(( 585 - ($(date +%s) - T0) ))
  [ $left -lt 90 ] && { echo "skip $s: $left s left" | tee -a $OUT/progress.txt; continue; }
  echo "$(( $(date +%s) - T0 ))s start $s" | tee -a $OUT/progress.txt
  timeout $left python3 -m wmtp.cli bench peers --out $OUT --shape full1b --sides $s --micro-batches 16,32 > $OUT/$s.log 2>&1
  echo "$(( $(date +%s) - T0 ))s end $s rc=$?" | tee -a $OUT/progress.txt
  grep -E "tokens/s|MFU|out of memory" $OUT/$s.log | tail -4
done
python3 - $OUT/full1b.json <<'PY'
import json,sys
for r in json.load(open(sys.argv[1]))['rows']:
    print(r['side'], r['micro_batch'], round(r.get('tokens_per_s') or 0), r.get('mfu'), r.get('peak_memory_gib'), r.get('error','')[:100] if r.get('error') else '')
PY
