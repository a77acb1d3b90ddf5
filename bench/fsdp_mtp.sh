#!/usr/bin/env bash
# The multi-token step under FSDP2 on 2 GPUs (`wmtp bench step --nproc-per-node 2`, random tokens):
# how much four heads cost over one with the same total layers, per `training.mtp_loss`.
#
#   OUT=... bash bench/fsdp_mtp.sh STAGE...      on nvidia-h200-x2 (carry .whl), e.g.
#   bash bench/fsdp_mtp.sh small 32000 large small 128256 joint
#
# Stages (in the order given; each bounded, none past END_S seconds of the call):
#   small VOCAB  recipes/gpu_2x_fast.toml (llama-1b-bench: dim 2048, 16 layers; shard_grad_op,
#            compiled, bf16 reduce), micro-batch 8 x 2048 per GPU, at vocab VOCAB (32000 or
#            128256): one head, then four with per_head and with chunked
#   joint    four heads with joint at vocab 32000 (everything kept: the no-recompute reference)
#   large    the same recipe at Meta's 7B multi-token shape (llama2-7b-mtp: dim 4096, 32 layers,
#            vocab 32k; full_shard, fp32 reduce), micro-batch 4: one head and four (per_head)
# Then, always: bench/summarise_fsdp_mtp.py -> $OUT/fsdp_mtp.json, fsdp_mtp.md, and the logs and
# raw results in $OUT/fsdp_mtp_logs.tar.gz.
set -u
source bench/device_setup.sh || exit 1
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_fsdp_mtp}
mkdir -p "$WORK"
export STEPS_FILE=$WORK/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
RECIPE=recipes/gpu_2x_fast.toml
export FSDP_MTP_COMMAND="END_S=$END_S bash bench/fsdp_mtp.sh $*"

# bench LABEL TIMEOUT SET...: the step on 2 GPUs; its JSON lands in $WORK/results/LABEL/
bench() {
  local label=$1 limit=$2; shift 2
  local sets=() s
  for s in "$@"; do sets+=(--set "$s"); done
  step "$label" "$limit" python3 -m wmtp.cli bench step "$RECIPE" --nproc-per-node 2 \
    --out "$WORK/results/$label" "${sets[@]}"
}

stage_small() {
  local vocab=$1 loss
  local common=("model.policy.vocab_size=$vocab" training.micro_batch_size=8)
  bench "ntp_v$vocab" 150 "${common[@]}" model.policy.n_future_tokens=1 "training.mtp_loss='per_head'"
  for loss in per_head chunked; do
    bench "mtp4_${loss}_v$vocab" 150 "${common[@]}" "training.mtp_loss='$loss'"
  done
}
stage_joint() {
  bench mtp4_joint_v32000 150 model.policy.vocab_size=32000 training.micro_batch_size=8 \
    "training.mtp_loss='joint'"
}
stage_large() {
  local common=("model.policy.flavour='llama2-7b-mtp'" "parallel.sharding='full_shard'"
                "parallel.reduce_dtype='float32'" training.micro_batch_size=4 "training.mtp_loss='per_head'")
  bench ntp_7b 200 "${common[@]}" model.policy.n_future_tokens=1
  bench mtp4_7b 200 "${common[@]}"
}

while [ $# -gt 0 ]; do
  case $1 in
    small) stage_small "$2"; shift 2 ;;
    *) "stage_$1" || echo "stage $1 failed ($?)"; shift ;;
  esac
done
mkdir -p "$OUT"
python3 bench/summarise_fsdp_mtp.py "$WORK" "$OUT"
tar -czf "$OUT/fsdp_mtp_logs.tar.gz" -C "$WORK" logs steps.jsonl results
fit_out  # at most the 8 files the device brings back: past that, the rest in results.tar.gz
exit 0
