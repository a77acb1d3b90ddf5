#!/usr/bin/env bash
# Issue 10: the production recipes (recipes/critic.toml, baseline.toml, verifiable.toml) at their
# real size - a 7B Meta MTP policy (4 heads, LoRA rank 64) and a 2.7B critic, randomly
# initialised (no weights can be downloaded), FSDP2 full_shard, bf16, activation checkpointing -
# on 4 GPUs through `wmtp run --nproc-per-node`, plus issue 9's 1- vs 2-GPU throughput.
#
#   bash bench/production.sh STAGE...     carry .whl, storage/datasets/humaneval, storage/models
#
# Stages (in the order given; each bounded, none past END_S seconds of the call):
#   probe       GPU topology and NCCL all-gather / reduce-scatter bandwidth on 2 and 4 GPUs
#   critic      critic.toml, 50 steps on 4 GPUs (its checkpoint weights verifiable.toml)
#   verifiable  verifiable.toml, 50 steps on 4 GPUs, weighted by that critic
#   baseline    baseline.toml, 60 steps on 4 GPUs, checkpoints at 50 and 60
#   resume      baseline's step-50 checkpoint resumed on 2 GPUs (same global batch), steps 51-60
#   scale2      critic and verifiable, 10 steps on 2 GPUs (same global batch): 2 -> 4 scaling
#   gpu2x       recipes/gpu_2x.toml on 1 and 2 GPUs (issue 9), padded and packed+compiled
#   gpu2x_scaling  issue 9 again, packed+compiled: the recipe unchanged on 1 and 2 GPUs (same
#               per-GPU batch), 1 GPU with 2 accumulation steps (same global batch), and
#               2 GPUs under shard_grad_op and with bf16 gradient reduction
#   gpu2x_fast  issue 9 with recipes/gpu_2x_fast.toml as committed (40 steps): 1 GPU, 2 GPUs, and
#               both again (two measurements of the speed-up)
#   decode_model  issue 7's model: gpu_2x.toml (4 heads, 1.1B) packed + compiled, 150 steps, GPUs 0-1
#   lanes       decode_model on GPUs 0-1 beside scale2 on GPUs 2-3
#   decode      issue 7: plain vs self-speculative decoding of decode_model (or gpu2x's model)
# N_CRITIC=K shortens the critic run (when only its checkpoint is needed).
#   summary     bench/summarise_production.py -> $OUT/production.json, production.md
# The recipes run unchanged but for `--set` of paths (tokenizer, no pretrained weights, the
# critic checkpoint, the run directory), step counts, and two changes every run states in its
# saved recipe: data = the built-in HumanEval packed to 2048-token rows (the recipes name a
# CodeContests file that cannot be downloaded here), grad_accum_steps = 1 (the figures are per
# GPU and per micro-batch; 8 accumulation steps would make 50 steps take 8x the device time).
# The tokenizer is bench/standin_tokenizer.py's 32,000-piece SentencePiece model.
# WMTP_PRODUCTION_CPU=1: the same script on CPU (gloo) with tiny models and 4-step runs (a check;
# tests/bench/test_production_script.py runs it). WMTP_STANDIN_TOKENIZER: another tokenizer.model.
set -u
N=50  # steps of each 4-GPU run
if [ "${WMTP_PRODUCTION_CPU:-0}" = 1 ]; then
  export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
  N=4
  SMALL=(--set "model.policy.flavour='tiny'" --set "model.critic.flavour='tiny'"
         --set "parallel.device='cpu'" --set training.micro_batch_size=2 --set data.max_length=256)
else
  source bench/device_setup.sh || exit 1
  SMALL=()
fi
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_production}
mkdir -p "$WORK/estimates"
export STEPS_FILE=$WORK/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
need_humaneval
export WMTP_DIST_TIMEOUT_S=${WMTP_DIST_TIMEOUT_S:-600}  # a 7B checkpoint save holds the barrier
TOKENIZER=${WMTP_STANDIN_TOKENIZER:-storage/models/llama2-7b-mtp/tokenizer.model}
[ -f "$TOKENIZER" ] || { echo "no $TOKENIZER: run bench/standin_tokenizer.py here and carry storage/models"; exit 1; }
FOUR=(env CUDA_VISIBLE_DEVICES=0,1,2,3) TWO=(env CUDA_VISIBLE_DEVICES=0,1) ONE=(env CUDA_VISIBLE_DEVICES=0)
COMMON=(--set "tokenizer.path='$TOKENIZER'" --set "model.policy.path=''"
        --set training.log_every=1 --set training.eval_every=0 --set training.schedule.warmup_steps=$((N < 10 ? 1 : 5)))
PACKED=(--set "data.kind='humaneval'" --set data.packing=true)
PAIRS=(--set "data.kind='humaneval'"
       --set "data.pairs={length_bins=[256, 512, 1024, 2048], max_pairs_per_problem=8, unique=true}")
CRITIC=(recipes/critic.toml "${PAIRS[@]}" "${COMMON[@]}" --set "model.critic.path=''")
verifiable_args() {
  echo recipes/verifiable.toml "${COMMON[@]}" "${PACKED[@]}" --set "model.critic.path=''"
}

# prod LABEL GPUS TIMEOUT RECIPE_ARGS...: validate's estimate at that world size, then the run.
prod() {
  local label=$1 gpus=$2 limit=$3; shift 3
  set -- "$@" "${SMALL[@]}"  # last: the CPU check's sizes win over the data table's
  python3 -m wmtp.cli validate "$@" --world-size "$gpus" --format json \
    > "$WORK/estimates/$label.json" 2> "$WORK/estimates/$label.err"
  local devices=(env CUDA_VISIBLE_DEVICES=${PROD_DEVICES:-$(seq -s, 0 $((gpus - 1)))})
  step "$label" "$limit" "${devices[@]}" python3 -m wmtp.cli run "$@" --nproc-per-node "$gpus" \
    --set "$(runs "$label")"
}

stage_probe() {
  nvidia-smi topo -m > "$LOG_DIR/topology.txt" 2>&1
  for n in 2 4; do
    NCCL_DEBUG=INFO step "nccl_$n" 90 python3 -m torch.distributed.run --standalone \
      --nproc-per-node "$n" bench/nccl_probe.py --mib 1024
  done
}
stage_critic() {
  local steps=${N_CRITIC:-$N}
  prod critic 4 240 "${CRITIC[@]}" --set training.grad_accum_steps=1 --set training.max_steps=$steps \
    --set training.schedule.warmup_steps=$((steps < 10 ? 1 : 5)) \
    --set training.checkpoint_every=0
}
critic_checkpoint() {  # the critic run's directory; a fresh machine trains one first
  latest critic > /dev/null 2>&1 && [ -e "$(latest critic)" ] || stage_critic >&2
  latest critic > /dev/null 2>&1 && [ -e "$(latest critic)" ] ||
    { echo "no critic checkpoint: the verifiable runs would weight by an untrained critic" >&2; return 1; }
  latest critic
}
stage_verifiable() {
  local critic
  critic=$(critic_checkpoint) || return
  prod verifiable 4 300 $(verifiable_args) --set "model.critic.checkpoint='$critic'" \
    --set training.grad_accum_steps=1 --set training.max_steps=$N --set training.checkpoint_every=0
}
stage_baseline() {
  prod baseline 4 300 recipes/baseline.toml "${COMMON[@]}" "${PACKED[@]}" \
    --set training.grad_accum_steps=1 --set training.max_steps=$((N + 10)) \
    --set training.checkpoint_every=$N --set training.keep_last=10
}
stage_resume() {  # a copy of the baseline run without its step-60 checkpoint, resumed on 2 GPUs
  local src dst=$WORK/resume/run
  src=$(latest baseline) || return
  rm -rf "$WORK/resume" && mkdir -p "$dst/checkpoints"
  find "$src" -maxdepth 1 -type f -exec cp {} "$dst/" \;
  cp -al "$src/checkpoints/step-$N" "$dst/checkpoints/"  # hard links: the state is only read
  step resume 240 "${TWO[@]}" python3 -m wmtp.cli run --resume "$dst" --force --nproc-per-node 2 \
    --set training.grad_accum_steps=2
}
stage_scale2() {
  prod critic_2gpu 2 150 "${CRITIC[@]}" --set training.grad_accum_steps=2 \
    --set training.max_steps=$((N < 10 ? 3 : 10)) --set training.checkpoint_every=0
  drop_checkpoints critic_2gpu
  local critic
  critic=$(critic_checkpoint) || return
  prod verifiable_2gpu 2 180 $(verifiable_args) --set "model.critic.checkpoint='$critic'" \
    --set training.grad_accum_steps=2 --set training.max_steps=$((N < 10 ? 3 : 10)) \
    --set training.checkpoint_every=0
  drop_checkpoints verifiable_2gpu
}
stage_gpu2x() {  # issue 9: the same global batch on 1 GPU (2 accumulation steps) and 2 GPUs
  local variant label sets
  for variant in padded packed_compiled; do
    sets=(--set training.max_steps=30)
    [ "$variant" = packed_compiled ] && sets+=(--set data.packing=true --set parallel.compile=true)
    label=gpu2x_${variant}_1
    step "$label" 180 "${ONE[@]}" python3 -m wmtp.cli run recipes/gpu_2x.toml "${sets[@]}" \
      --set training.grad_accum_steps=2 --set "$(runs "$label")"
    drop_checkpoints "$label"
    label=gpu2x_${variant}_2
    step "$label" 180 "${TWO[@]}" python3 -m wmtp.cli run recipes/gpu_2x.toml "${sets[@]}" \
      --nproc-per-node 2 --set training.grad_accum_steps=1 --set "$(runs "$label")"
    [ "$variant" = packed_compiled ] || drop_checkpoints "$label"  # the decode stage's model
  done
}
stage_gpu2x_scaling() {  # issue 9: which sharding and reference the 1.9x is measured against
  local base=(recipes/gpu_2x.toml --set training.max_steps=30 --set data.packing=true
              --set parallel.compile=true)
  local label
  for label in gpu2x_1gpu gpu2x_1gpu_accum2; do
    local accum=1
    [ "$label" = gpu2x_1gpu_accum2 ] && accum=2
    step "$label" 150 "${ONE[@]}" python3 -m wmtp.cli run "${base[@]}" \
      --set training.grad_accum_steps=$accum --set "$(runs "$label")"
    drop_checkpoints "$label"
  done
  local variant
  for variant in full_shard shard_grad_op shard_grad_op:bfloat16; do
    label=gpu2x_2gpu_${variant/:/_}
    step "$label" 150 "${TWO[@]}" python3 -m wmtp.cli run "${base[@]}" --nproc-per-node 2 \
      --set "parallel.sharding='${variant%%:*}'" \
      --set "parallel.reduce_dtype='$([ "${variant#*:}" = bfloat16 ] && echo bfloat16 || echo float32)'" \
      --set "$(runs "$label")"
    drop_checkpoints "$label"
  done
}
stage_gpu2x_fast() {  # issue 9: the committed throughput recipe, 1 and 2 GPUs, twice
  local round gpus label
  for round in a b; do
    for gpus in 1 2; do
      label=gpu2x_fast_${gpus}_$round
      local launch=("${ONE[@]}") extra=()
      [ "$gpus" = 2 ] && launch=("${TWO[@]}") extra=(--nproc-per-node 2)
      step "$label" 150 "${launch[@]}" python3 -m wmtp.cli run recipes/gpu_2x_fast.toml "${extra[@]}" \
        --set training.max_steps=40 --set "$(runs "$label")"
      drop_checkpoints "$label"
    done
  done
}
stage_decode_model() {  # issue 7's model: gpu_2x.toml packed + compiled, 150 steps on GPUs 0-1
  step decode_model 300 "${TWO[@]}" python3 -m wmtp.cli run recipes/gpu_2x.toml --nproc-per-node 2 \
    --set data.packing=true --set parallel.compile=true --set training.max_steps=150 \
    --set "$(runs decode_model)"
}
stage_lanes() {  # the decode model on GPUs 0-1 while the 2-GPU scaling runs use GPUs 2-3
  stage_decode_model &
  PROD_DEVICES=2,3 stage_scale2 &
  wait
}
stage_decode() {  # issue 7: plain vs self-speculative decoding of a trained 4-head model
  local model
  model=$(latest decode_model 2>/dev/null) || model=$(latest gpu2x_packed_compiled_2)
  step decode 240 "${ONE[@]}" python3 -m wmtp.cli bench decode \
    --checkpoint "$model" --prompts 5 --new-tokens 256 --out "$WORK/decode.json"
}
stage_summary() {
  python3 bench/summarise_production.py --work "$WORK" --out "$OUT" --steps "$N"
}

nvidia-smi --query-gpu=name,memory.total --format=csv > "$LOG_DIR/gpus.txt" 2>&1
for stage in "$@"; do
  echo "### stage $stage (${SECONDS}s)"
  "stage_$stage"
done
# Logs and metrics come back as one archive (the device returns at most 8 files).
mkdir -p "$OUT/logs"
for d in "$WORK"/*/; do
  name=$(basename "$d")
  for f in "$d"*/*/metrics.jsonl "$d"run/metrics.jsonl; do
    [ -f "$f" ] && mkdir -p "$OUT/logs/runs/$name" && cp "$f" "$(dirname "$f")/recipe.toml" "$OUT/logs/runs/$name/" 2>/dev/null
  done
done
cp -r "$WORK/estimates" "$LOG_DIR"/*.log "$LOG_DIR"/*.txt "$STEPS_FILE" "$OUT/logs/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
fit_out  # at most the 8 files the device brings back: past that, the rest in results.tar.gz
ls -la "$OUT"
