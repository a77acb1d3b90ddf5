#!/usr/bin/env bash
# One H100: the LoRA 7B shape at micro-batch 4, the fastest LoRA peer (HF + PEFT + compile, no
# checkpointing) and wmtp four heads (no checkpointing) in one call; the peer first (its whole-model
# compile ran out of the earlier calls' limits after its micro-batch 1).
set -u
T0=$(date +%s)
source bench/device_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" | tee $OUT/versions.txt
echo "$(( $(date +%s) - T0 ))s start peer" | tee -a $OUT/progress.txt
timeout 420 python3 -m wmtp.cli bench peers --out $OUT --shape lora7b \
  --sides hf-peft+compile+no-checkpointing --micro-batches 4 > $OUT/log_peer.txt 2>&1
echo "$(( $(date +%s) - T0 ))s end peer rc=$?" | tee -a $OUT/progress.txt
left=$(( 575 - ($(date +%s) - T0) ))
echo "$(( $(date +%s) - T0 ))s start wmtp ($left s)" | tee -a $OUT/progress.txt
timeout $left python3 -m wmtp.cli bench peers --out $OUT --shape lora7b \
  --sides wmtp-4heads+no-checkpointing --micro-batches 4 > $OUT/log_wmtp.txt 2>&1
echo "$(( $(date +%s) - T0 ))s end wmtp rc=$?" | tee -a $OUT/progress.txt
grep -hE "tok/s|out of memory|Error" $OUT/log_peer.txt $OUT/log_wmtp.txt | tail -8
