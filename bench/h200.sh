#!/usr/bin/env bash
# One H200: issue 20's comparison of wmtp with the peers a user would pick, both shapes, in one
# command (carry .whl with the default wheels plus liger-kernel; see README "Benchmarks (GPU)"):
#   bash bench/h200.sh [STAGE...]      (no stage: every stage below, in this order)
# Stages (none runs past END_S seconds of the call; each writes its rows as they are measured):
#   lora7b          the production LoRA recipe as written (blocks compiled on CUDA): wmtp with four
#                   heads and one, HF + PEFT LoRA with and without Liger, each swept over
#                   micro-batches 1, 2, 4, 8 (2 warm-up + 5 timed steps)
#   full1b          the 1B full fine-tune: wmtp one head, HF sdpa, HF + Liger, micro-batches
#                   2, 4, 8, 16 (3 warm-up + 10 timed steps)
#   full1b_compile  HF + torch.compile at the 1B shape (its own process: compiled graphs)
#   full1b_titan    one call: wmtp one head, HF + Liger (the fastest Hugging Face peer at 1B),
#                   then torchtitan 0.2.2's own Llama3 at the 1B shape, its trainer's setting on
#                   one GPU (per-block compile, bf16 autocast, compiled cross-entropy), at
#                   micro-batches FULL_MB (default 8,16,32; torchtitan in its own process, after
#                   the others; carry .whl holding bench/torchtitan.txt's wheels)
#   full1b_mtp4     wmtp with four heads at the best micro-batch of one head (the FLOP floor)
#   lora7b_compile  HF + PEFT + torch.compile at the LoRA shape
#   lora7b_no_checkpointing  HF + PEFT without gradient checkpointing, plain and with Liger, then
#                   compiled (Hugging Face checkpoints every layer or none: the recipe's one block
#                   in 11 has no like setting there, so each peer is measured both ways and its
#                   best counts) at micro-batches LORA_MB (default 1, 2, 4, 8)
#   lora7b_same_call  wmtp (four heads; last, one head at their best micro-batch) and HF + PEFT +
#                   compile, both without activation checkpointing, at LORA_MB (default 1,2,4),
#                   then the recipe as written (micro-batch 1, 32 a step): one call, so that the
#                   LoRA ratios compare figures of one machine (STEP_PEERS=$OUT/h200.json)
#   lora7b_best     the LoRA recipe as written (blocks compiled on CUDA) with four heads and one,
#                   and HF + PEFT + Liger, at micro-batches LORA_MB (default 4,8)
#   lora7b_variants the LoRA recipe's step at micro-batch 4 as written and with one setting
#                   changed (LoRA dropout 0; activation checkpointing off, every 2nd block):
#                   where the time goes ($OUT/variants/<name>.json)
#   run_vs_step     `wmtp run` of the LoRA recipe as written (random weights, byte tokenizer, the
#                   built-in HumanEval packed into rows of up to 2048 tokens, 15 optimizer steps
#                   of 32 rows, the first steps compiling each padded row length) against `wmtp
#                   bench step` of the same settings ($OUT/run_vs_step/; carry
#                   storage/datasets/humaneval; about 8 minutes)
#   lora7b_profile  torch.profiler of the LoRA recipe's step at micro-batch 4, eager and compiled
#                   (`wmtp bench step --profile 2`)
#   lora7b_profile_compiled  its compiled half alone; LORA_PROFILE_MB: its micro-batch (default 4;
#                   1 is the recipe's own); LORA_PROFILE_SET="--set parallel.float8=true" with
#                   LORA_PROFILE_TAG=_float8 profiles the float8 step beside it
#   ab              the LoRA recipe's step (compiled, micro-batch 8) and the 1B full fine-tune's
#                   (micro-batch 16) with the code at each of AB_OLD="DIR ..." (DIR/wmtp: an
#                   earlier package, carried; `git archive REV wmtp | tar -x -C DIR`) and with this
#                   checkout's, one after the other (name the earlier folder `before`: results
#                   ab/<shape>_before/ and ab/<shape>_after/); AB_SHAPES="full1b" for the 1B step alone,
#                   AB_SET="--set parallel.float8=true" for its float8 step (with AB_TAG=_float8,
#                   say, so that its logs and results sit beside the bf16 ones); AB_REVERSE=1 times
#                   this checkout's code first (the order's own effect); AB_LORA_MB: the LoRA
#                   step's micro-batch (default 8)
#   lora7b_float8_same_call  float8 LoRA in one call: HF + PEFT + compile without checkpointing
#                   in float8 (torchao on its frozen base linears; first, its compile takes over
#                   240 s), wmtp four heads (the recipe as written, and without checkpointing)
#                   with parallel.float8, then the peer in bf16, at micro-batches LORA_MB (default
#                   1,4; LORA_MB=1 END_S=580 fits one call)
#   verifiable_step the production verifiable step (7B LoRA policy, frozen 2.7B critic, random
#                   weights, the recipe's micro-batch, one per optimizer step) beside the
#                   baseline step of the same settings
#   lora7b_memory_budget  the LoRA step (compiled) at micro-batch 1 without activation
#                   checkpointing, and at 1 and 2 checkpointing every 2nd block: less
#                   recomputation within the best peer's memory (26.2 GiB at micro-batch 8)
#   lora7b_accumulated  the best of those with gradient accumulation, as users train: 8
#                   sequences per optimizer step (the peer's micro-batch 8) and the recipe's 32,
#                   beside the previous recipe (micro-batch 4, every block checkpointed, 8 steps)
#   lora7b_within_memory  micro-batch 1, 32 sequences a step, under the peer's memory: one
#                   block in 16 or in 11 checkpointed (and none again, for the spread)
#   vocab128k       wmtp one head and four heads at the 1B shape with a 128,256-token vocabulary
#                   (micro-batch 8). These four: $OUT/measured.tar.gz
#   full1b_profile  torch.profiler of the 1B full fine-tune's step (one head, compiled, micro-
#                   batch 16). Profiles: $OUT/profiles.tar.gz (per profile an operator table and
#                   GPU timeline .txt, the timeline's .json, the trace where the archive allows)
#   full1b_float8_profile  the same for the 1B step with parallel.float8, then torchtitan's own
#                   float8 step (bench/profile_titan.py --float8) summarised by the same function
#   float8          parallel.float8 against bf16, both compiled (torchao from .whl/): the LoRA
#                   recipe's step at micro-batch 4 ($OUT/float8/lora7b_{bf16,float8}/), and the 1B
#                   full fine-tune's sides wmtp-1head+float8 and titan+float8 (torchtitan's own
#                   float8 training) at wmtp-1head's best micro-batch (into full1b.json: after the
#                   full1b stage, or with PEERS_FROM)
#   float8_loss     `wmtp run` of recipes/gpu_2x.toml (1.1B, four heads, packed HumanEval,
#                   compiled, micro-batch 4) for 300 steps in bf16, then in float8: their
#                   metrics.jsonl as $OUT/float8/loss_{bf16,float8}.jsonl (carry
#                   storage/datasets/humaneval)
# Then always: bench/summarise_h200.py -> $OUT/h200.json, h200.md. Results land in $OUT
# (full1b.json, lora7b.json, h200.json, h200.md, steps.jsonl, logs.tar.gz); after the stages that
# time or profile single steps also bench/summarise_step.py -> h200_step.json, h200_step.md (its
# LoRA peer from STEP_PEERS, default bench/results/h200.json). PEERS_FROM=DIR first
# copies an earlier call's full1b.json / lora7b.json into $OUT, so a second call adds its sides.
set -u
source bench/device_setup.sh || exit 1
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_h200}
mkdir -p "$WORK"
export STEPS_FILE=$OUT/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
[ -n "${PEERS_FROM:-}" ] && cp "$PEERS_FROM"/full1b.json "$PEERS_FROM"/lora7b.json "$OUT"/ 2>/dev/null

# `timeout` runs commands, not functions; PEERS_ARGS: more arguments for every call (a rehearsal's
# --set of tiny sizes on the CPU, say; split on spaces)
PEERS=(python3 -m wmtp.cli bench peers --out "$OUT" ${PEERS_ARGS:-})
stage_lora7b() {
  step lora7b 300 "${PEERS[@]}" --shape lora7b --sides wmtp-4heads,wmtp-1head,hf-peft,hf-peft+liger
}
stage_full1b() {
  step full1b 300 "${PEERS[@]}" --shape full1b --sides wmtp-1head,hf,hf+liger
}
stage_full1b_compile() {
  step full1b_compile 200 "${PEERS[@]}" --shape full1b --sides hf+compile
}
stage_full1b_titan() {  # wmtp and the peers at the same micro-batches in one call; torchtitan
  # in its own process (importing it changes process-wide settings)
  step full1b_titan_wmtp 150 "${PEERS[@]}" --shape full1b --sides wmtp-1head \
    --micro-batches ${FULL_MB:-8,16,32}
  step full1b_titan_liger 150 "${PEERS[@]}" --shape full1b --sides hf+liger \
    --micro-batches ${FULL_MB:-8,16,32}
  step full1b_titan 240 "${PEERS[@]}" --shape full1b --sides titan \
    --micro-batches ${FULL_MB:-8,16,32}
}
stage_full1b_mtp4() {
  step full1b_mtp4 120 "${PEERS[@]}" --shape full1b --sides wmtp-4heads --micro-batches best:wmtp-1head
}
stage_lora7b_compile() {
  step lora7b_compile 240 "${PEERS[@]}" --shape lora7b --sides hf-peft+compile \
    ${LORA_MB:+--micro-batches $LORA_MB}
}
stage_lora7b_no_checkpointing() {
  step lora7b_no_checkpointing 300 "${PEERS[@]}" --shape lora7b \
    --sides hf-peft+no-checkpointing,hf-peft+liger+no-checkpointing ${LORA_MB:+--micro-batches $LORA_MB}
  step lora7b_compile_no_checkpointing 240 "${PEERS[@]}" --shape lora7b \
    --sides hf-peft+compile+no-checkpointing ${LORA_MB:+--micro-batches $LORA_MB}
}
stage_lora7b_same_call() {  # wmtp and the fastest LoRA peer, each at its best setting, in one
  # call: the peer compiled without checkpointing, wmtp the same, then the recipe as written
  # (the peer compiles the whole model again at each micro-batch: about 110 s each on an H100)
  step lora7b_same_call_peer 330 "${PEERS[@]}" --shape lora7b \
    --sides hf-peft+compile+no-checkpointing --micro-batches ${LORA_MB:-1,2,4}
  step lora7b_same_call_wmtp 120 "${PEERS[@]}" --shape lora7b \
    --sides wmtp-4heads+no-checkpointing --micro-batches ${LORA_MB:-1,2,4}
  budget_steps 3 "${WITHIN[1]}"  # the recipe as written: micro-batch 1, 32 a step, 1 block in 11
  step lora7b_same_call_ntp 60 "${PEERS[@]}" --shape lora7b \
    --sides wmtp-1head+no-checkpointing --micro-batches best:wmtp-4heads+no-checkpointing
}
stage_lora7b_float8_same_call() {  # the float8 peer first: its whole-model compile ran past
  # 240 s in two H100 calls (bench/results/h100_lora_mb1_20261206)
  step lora7b_float8_peer 400 "${PEERS[@]}" --shape lora7b \
    --sides hf-peft+compile+no-checkpointing+float8 --micro-batches ${LORA_MB:-1,4}
  step lora7b_float8_wmtp 200 "${PEERS[@]}" --shape lora7b \
    --sides wmtp-4heads+float8,wmtp-4heads+no-checkpointing+float8 --micro-batches ${LORA_MB:-1,4}
  step lora7b_bf16_peer 240 "${PEERS[@]}" --shape lora7b \
    --sides hf-peft+compile+no-checkpointing --micro-batches ${LORA_MB:-1,4}
}
stage_lora7b_best() {  # the recipe as written (compiled on CUDA) and the fastest peers
  step lora7b_best 300 "${PEERS[@]}" --shape lora7b \
    --sides wmtp-4heads,wmtp-1head,hf-peft+liger --micro-batches ${LORA_MB:-4,8}
}
LORA_STEP=(python3 -m wmtp.cli bench step recipes/baseline.toml --set "model.policy.path=''"
  --set "tokenizer={kind='byte'}" --set training.grad_accum_steps=1
  --set training.micro_batch_size=4 --warmup 3 --repeats 5 --profile 2)
stage_lora7b_profile() {
  step lora7b_profile_eager 120 "${LORA_STEP[@]}" --set parallel.compile=false \
    --out "$WORK/profiles/lora7b_eager"
  stage_lora7b_profile_compiled
}
stage_lora7b_profile_compiled() {
  local mb=${LORA_PROFILE_MB:-4} name=lora7b_compile
  [ "$mb" = 4 ] || name=lora7b_compile_mb$mb
  name=$name${LORA_PROFILE_TAG:-}
  step "lora7b_profile_compile_mb$mb${LORA_PROFILE_TAG:-}" 200 "${LORA_STEP[@]}" \
    --set "training.micro_batch_size=$mb" ${LORA_PROFILE_SET:-} --out "$WORK/profiles/$name"
  pack_profiles
}
full1b_recipe() {  # full1b_recipe MICRO_BATCH: the full1b shape's wmtp recipe as a TOML file
  python3 -c "import sys, tomli_w; from wmtp.bench.suite import suite_recipe_data as r
sys.stdout.write(tomli_w.dumps(r('llama-1b-bench', 2048, micro_batch=$1)))" > "$WORK/full1b.toml"
}
stage_full1b_profile() {  # the 1B full fine-tune's step (one head, compiled) at micro-batch 16
  full1b_recipe 16
  step full1b_profile 200 python3 -m wmtp.cli bench step "$WORK/full1b.toml" --warmup 3 \
    --repeats 5 --profile 2 --out "$WORK/profiles/full1b"
  pack_profiles
}
stage_full1b_float8_profile() {  # wmtp's float8 step and torchtitan's own, profiled alike
  full1b_recipe 16
  step full1b_float8_profile 200 python3 -m wmtp.cli bench step "$WORK/full1b.toml" \
    --set parallel.float8=true --warmup 3 --repeats 5 --profile 2 \
    --out "$WORK/profiles/full1b_float8"
  step titan_float8_profile 200 python3 bench/profile_titan.py --shape full1b --micro-batch 16 \
    --float8 --out "$WORK/profiles/titan_float8"
  pack_profiles
}
MEASURED=$WORK/measured  # stages below write here; measured.tar.gz carries it back
STEP=(python3 -m wmtp.cli bench step)
stage_ab() {  # the same steps with the code at each of $AB_OLD (earlier wmtp/) and with this one
  local when path py lora=("${LORA_STEP[@]:3:${#LORA_STEP[@]}-5}")  # its arguments, no --profile
  local shape shapes=(${AB_SHAPES:-lora7b full1b})
  full1b_recipe 16
  local order="${AB_OLD:?set AB_OLD to folders holding an earlier wmtp/} this"
  [ -n "${AB_REVERSE:-}" ] && order="this $AB_OLD"  # the same, this checkout's code timed first
  for when in $order; do
    # -P: no current directory first on sys.path, so PYTHONPATH says which wmtp is imported
    path=$PYTHONPATH py=(python3 -P -m wmtp.cli)
    [ "$when" = this ] || path=$when:$path
    env PYTHONPATH="$path" python3 -P -c "import wmtp; print('$when:', wmtp.__file__)"
    when=$(basename "$when"); [ "$when" = this ] && when=after  # bench/summarise_step.py's names
    for shape in "${shapes[@]}"; do
      if [ "$shape" = lora7b ]; then
        step "ab_lora7b${AB_TAG:-}_$when" 150 env PYTHONPATH="$path" "${py[@]}" "${lora[@]}" \
          --set training.micro_batch_size=${AB_LORA_MB:-8} --repeats 8 ${AB_SET:-} \
          --out "$MEASURED/ab/lora7b${AB_TAG:-}_$when"
      else
        step "ab_${shape}${AB_TAG:-}_$when" 100 env PYTHONPATH="$path" "${py[@]}" bench step \
          "$WORK/full1b.toml" --warmup 3 --repeats 10 ${AB_SET:-} --out "$MEASURED/ab/${shape}${AB_TAG:-}_$when"
      fi
    done
  done
  pack_measured
}
STEP_SETS=(--set "model.policy.path=''" --set "tokenizer={kind='byte'}"
  --set training.grad_accum_steps=1 --warmup 3 --repeats 8)  # the recipes' micro-batch
stage_verifiable_step() {  # the production verifiable step (7B LoRA policy, frozen 2.7B critic)
  # beside the baseline step of the same settings, both as written (compiled on CUDA)
  step step_verifiable 150 "${STEP[@]}" recipes/verifiable.toml "${STEP_SETS[@]}" \
    --set "model.critic.path=''" --set "model.critic.checkpoint=''" \
    --out "$MEASURED/verifiable_step/verifiable"
  step step_baseline 150 "${STEP[@]}" recipes/baseline.toml "${STEP_SETS[@]}" \
    --out "$MEASURED/verifiable_step/baseline"
  pack_measured
}
stage_vocab128k() {  # four heads against one at a 128k vocabulary (the 1B shape, micro-batch 8)
  step vocab128k 200 "${PEERS[@]/$OUT/$MEASURED/vocab128k}" --shape full1b \
    --sides wmtp-1head,wmtp-4heads --micro-batches 8 --set model.policy.vocab_size=128256
  pack_measured
}
pack_measured() { tar -czf "$OUT/measured.tar.gz" -C "$WORK" measured 2>/dev/null; }
pack_profiles() {  # every profile so far (tables, GPU timelines, traces) -> $OUT/profiles.tar.gz
  tar -czf "$OUT/profiles.tar.gz" -C "$WORK" profiles 2>/dev/null
  [ "$(stat -c %s "$OUT/profiles.tar.gz")" -lt 16000000 ] ||
    tar -czf "$OUT/profiles.tar.gz" -C "$WORK" --exclude='*.trace.json.gz' profiles
}
VARIANTS=('as_written:parallel.compile="auto"' no_dropout:model.policy.lora.dropout=0
  no_checkpointing:parallel.activation_checkpointing=false
  checkpoint_every_2nd:parallel.activation_checkpointing=2)
stage_lora7b_variants() {
  local v
  for v in "${VARIANTS[@]}"; do
    step "variant_${v%%:*}" 100 "${LORA_STEP[@]:0:${#LORA_STEP[@]}-2}" --set "${v#*:}" \
      --out "$OUT/variants/${v%%:*}"
  done
}
BUDGET=(mb1_no_checkpointing:1:false:1 mb2_every_2nd:2:2:1 mb1_every_2nd:1:2:1)
# the same sequences per optimizer step as the peer (8: its micro-batch) and as the recipe (32)
ACCUMULATED=(mb1_no_checkpointing_accum8:1:false:8 mb1_no_checkpointing_accum32:1:false:32
  mb4_every_block_accum8:4:true:8)
# accumulated gradients (fp32, 0.6 GiB) outlive the micro-batch: ways back under the peer's memory
WITHIN=(mb1_every_16th_accum32:1:16:32 mb1_every_11th_accum32:1:11:32
  mb1_no_checkpointing_accum32_again:1:false:32)
AS_WRITTEN=mb1_every_11th_accum32  # recipes/base.toml's setting: the LoRA target's figures
stage_lora7b_memory_budget() {  # the LoRA step (compiled) with less recomputation at smaller
  # micro-batches: which fits the best peer's memory (HF + PEFT + compile at micro-batch 8,
  # 26.2 GiB) at the most tokens/s
  budget_steps 8 "${BUDGET[@]}"
}
stage_lora7b_accumulated() {  # the same with gradient accumulation, as a user trains: the
  # optimizer step's cost shared by as many sequences as the peer's (or the recipe's) step has
  budget_steps 3 "${ACCUMULATED[@]}"
}
stage_lora7b_within_memory() {  # the recipe's 32 sequences a step within the peer's memory
  budget_steps 3 "${WITHIN[@]}"
}
budget_steps() {  # budget_steps REPEATS NAME:MICRO_BATCH:CHECKPOINTING:GRAD_ACCUM...
  local repeats=$1 v name mb ac accum
  shift
  for v in "$@"; do
    IFS=: read -r name mb ac accum <<< "$v"
    step "budget_$name" 150 "${LORA_STEP[@]:0:${#LORA_STEP[@]}-4}" --set parallel.compile=true \
      --set "training.micro_batch_size=$mb" --set "parallel.activation_checkpointing=$ac" \
      --set "training.grad_accum_steps=$accum" --warmup 2 --repeats "$repeats" \
      --out "$MEASURED/memory_budget/$name"
  done
  pack_measured
}
RUN_SETS=(--set "model.policy.path=''" --set "tokenizer={kind='byte'}"
  --set "data.kind='humaneval'" --set data.packing=true)
stage_run_vs_step() {  # the recipe's own micro-batch and accumulation (32 sequences a step)
  need_humaneval
  step run_vs_step_bench 200 python3 -m wmtp.cli bench step recipes/baseline.toml "${RUN_SETS[@]}" \
    --warmup 2 --repeats 3 --out "$OUT/run_vs_step"
  step run_vs_step_run 420 python3 -m wmtp.cli run recipes/baseline.toml "${RUN_SETS[@]}" \
    --set training.max_steps=15 --set training.log_every=1 --set training.eval_every=0 \
    --set training.checkpoint_every=1000 --set training.schedule.warmup_steps=1 \
    --set "$(runs run_vs_step)"
  cp "$(latest run_vs_step)/metrics.jsonl" "$OUT/run_vs_step/" 2>/dev/null
}
F8_LORA=("${LORA_STEP[@]:0:${#LORA_STEP[@]}-2}" --set parallel.compile=true)  # no --profile
stage_float8() {  # tokens/s with and without float8 in one call, both compiled
  step float8_lora7b_bf16 150 "${F8_LORA[@]}" --out "$OUT/float8/lora7b_bf16"
  step float8_lora7b_float8 150 "${F8_LORA[@]}" --set parallel.float8=true \
    --out "$OUT/float8/lora7b_float8"
  step float8_full1b 150 "${PEERS[@]}" --shape full1b --sides wmtp-1head+float8 \
    --micro-batches best:wmtp-1head
  step float8_full1b_titan 150 "${PEERS[@]}" --shape full1b --sides titan+float8 \
    --micro-batches best:wmtp-1head
}
F8_RUN=(python3 -m wmtp.cli run recipes/gpu_2x.toml --set data.packing=true
  --set parallel.compile=true --set training.micro_batch_size=4 --set training.max_steps=300)
float8_run() {  # float8_run MODE FLOAT8: 300 steps; the newest run's metrics kept (a run cut
  # short too: the summariser compares the steps both logged), its checkpoint dropped
  local metrics
  step "float8_loss_$1" 200 "${F8_RUN[@]}" --set "parallel.float8=$2" --set "$(runs "float8_$1")"
  metrics=$(ls -t "$WORK/float8_$1"/*/*/metrics.jsonl 2>/dev/null | head -n 1)
  mkdir -p "$OUT/float8"
  [ -n "$metrics" ] && cp "$metrics" "$OUT/float8/loss_$1.jsonl"
  drop_checkpoints "float8_$1"
}
stage_float8_loss() {  # the same run (seed, data, order) in bf16 and in float8
  need_humaneval
  float8_run bf16 false
  float8_run float8 true
}

[ $# -eq 0 ] && set -- lora7b full1b full1b_compile full1b_mtp4 lora7b_compile lora7b_no_checkpointing full1b_titan
run_stages "$@"
python3 bench/summarise_h200.py --results "$OUT" --script "bash bench/h200.sh $*" \
  2>&1 | tee "$LOG_DIR/summary.log"
if [ -d "$MEASURED" ] || [ -d "$WORK/profiles" ]; then  # the stages that time or profile steps
  python3 bench/summarise_step.py --results "$MEASURED" --profiles "$WORK/profiles" --out "$OUT" \
    --note "bash bench/h200.sh $*" --peers "${STEP_PEERS:-bench/results/h200.json}" \
    --as-written "$AS_WRITTEN" \
    2>&1 | tee -a "$LOG_DIR/summary.log"
  [ -f "$OUT/h200.json" ] && python3 bench/summarise_h200.py --from-summary "$OUT/h200.json" \
    --step "$OUT/h200_step.json" 2>&1 | tee -a "$LOG_DIR/summary.log"
fi
pack_logs
