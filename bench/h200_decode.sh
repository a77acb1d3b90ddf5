#!/usr/bin/env bash
# One H200: issue 21's decoding figures in one command (carry .whl and, for `humaneval`,
# storage/datasets/humaneval; see README "Benchmarks (GPU)"):
#   bash bench/h200_decode.sh [STAGE...]      (no stage: every stage below, in this order)
# Stages (none runs past END_S seconds of the call):
#   cuda_tests      the CUDA-only decoding tests (compiled, captured steps = eager ones and plain
#                   greedy; block-skipping attention = masked sdpa) -> $OUT/cuda_tests.log
#   decode_1b       llama-1b-bench, 4 heads, random weights, batch 1: plain vs self-speculative
#                   greedy, rigged agreeing heads, the weight-bandwidth limit, and the same steps
#                   without fused projections ($OUT/decode_1b.json)
#   decode_1b_peers the same model against HF generate (dynamic cache; static cache compiled by
#                   generate, new in each call or one kept across calls)
#                   at batch 1 and 20, with wmtp's batched speculative sampling beside its plain
#                   ($OUT/decode_1b_peers.json; its own call: HF's compilations take minutes)
#   decode_1b_sampled  the same sampled at 0.2 / top-p 0.95: speculative sampling's acceptance
#   decode_7b       llama2-7b-mtp: the bandwidth fraction at 7B, and rigged agreeing heads (a
#                   verify forward's three extra head layers weigh less beside 7B's trunk than
#                   beside 1B's: how close agreeing heads come to tokens-per-forward there)
#                   ($OUT/decode_7b.json)
#   profile         torch.profiler traces of decoding llama-1b-bench: plain at batch 1 and at
#                   32 sampled rows across the context, an evaluation's shape; self-speculative at
#                   batch 1, greedy and sampled ($OUT/profile.tar.gz)
#   decode_model    a 4-head 1.1B model trained here (recipes/gpu_2x.toml, packed, compiled,
#                   300 steps), as bench/h100.sh does
#   decode_trained  that model: plain vs speculative, greedy and sampled (sampled also with eager
#                   steps: the acceptance of the eager verification beside the captured one)
#   humaneval       `wmtp eval` of that model: 164 problems x 20 samples x 512 tokens, wall times
#                   (the recipe's `evaluation.batch_size`, 32 rows per step; ~110 s: after
#                   decode_model and decode_trained (~470 s) it needs a call of its own, made
#                   while the machine is still warm, which keeps $WORK's model)
#   humaneval_wide  the same at 128 rows per step ($OUT/humaneval_n20_b128)
#   decode_ab       agreeing heads at llama-1b-bench and llama2-7b-mtp with the code at AB_OLD=DIR
#                   (DIR/wmtp: an earlier package, carried; `git archive REV wmtp | tar -x -C DIR`)
#                   and with this checkout's, one after the other in this call ($OUT/ab/): across
#                   calls the same code's speculative figure moves by more than most changes
#   verify_ab       batch 1 with agreeing heads (bench/decode_probe.py --speculative): plain and
#                   self-speculative greedy as shipped, then with a verify step's 4-row products
#                   as tuned reductions (--small-m reduce --tune all), one process each
#                   ($OUT/verify_{shipped,reduce}.json; ~5 minutes)
#   options_ab      batch 1 plain greedy (bench/decode_probe.py) as shipped, with Hopper's
#                   programmatic dependent launch for Inductor's kernels, and with independent
#                   kernels combined: the ~14 gaps a block between a step's kernels
#                   ($OUT/options_{shipped,pdl,combo}.json; each batch-1 case's call profiled:
#                   kernels a step, idle time before each, $OUT/options_profiles.tar.gz; ~6 minutes)
#   splits_ab       batch 1 greedy (bench/decode_probe.py --long: a 256-token and a context-filling
#                   prompt) and batch 20 sampled, with FlexAttention's decoding kernel splitting
#                   each row's keys as shipped (33 parts at batch 1) and into 4, 8 and 16 parts
#                   ($OUT/splits_{shipped,4,8,16}.json; ~5 minutes)
#   eval_ab         an evaluation's decoding (bench/eval_probe.py: 164 prompts x 20 sampled rows,
#                   32 slots, llama-1b-bench random weights): where the host's time goes, what
#                   synchronises, with this checkout's code and, with AB_OLD=DIR set, an earlier
#                   package's, in this call ($OUT/eval_{now,before}.json; ~4 minutes)
#   attention_ab    whole decoding calls (bench/decode_probe.py --long: batch 20 sampled and
#                   greedy, batch 1, short and context-filling prompts), one process each: as
#                   shipped; the compiled step's attention as two matrix products Inductor fuses
#                   (not FlexAttention); keys and values in one cache tensor, written by one
#                   index_put ($OUT/attention_{flex,math,one_kv}.json; up to 10 minutes)
# Then always: bench/summarise_decode.py -> $OUT/h200_decode.json, h200_decode.md.
set -u
source bench/device_setup.sh || exit 1
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_decode}
mkdir -p "$WORK"
export STEPS_FILE=$OUT/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
export WMTP_SANDBOX=rlimits  # no bubblewrap on the GPU machine (the eval says what that means)

DECODE=(python3 -m wmtp.cli bench decode)
ONE_B=(--flavour llama-1b-bench --n-future-tokens 4 --prompts 3 --new-tokens 256)
SAMPLED=(--temperature 0.2 --top-p 0.95)
stage_decode_1b() {
  step decode_1b 330 "${DECODE[@]}" "${ONE_B[@]}" --agreeing-heads --also-unfused \
    --out "$OUT/decode_1b.json"
}
stage_decode_1b_peers() {
  step decode_1b_peers 550 "${DECODE[@]}" "${ONE_B[@]}" --peers --out "$OUT/decode_1b_peers.json"
}
stage_decode_1b_sampled() {
  step decode_1b_sampled 120 "${DECODE[@]}" "${ONE_B[@]}" --agreeing-heads "${SAMPLED[@]}" \
    --out "$OUT/decode_1b_sampled.json"
}
stage_decode_7b() {
  step decode_7b 300 "${DECODE[@]}" --flavour llama2-7b-mtp --prompts 2 --new-tokens 128 \
    --agreeing-heads --out "$OUT/decode_7b.json"
}
stage_cuda_tests() {
  step cuda_tests 300 python3 -m pytest -p no:cacheprovider -q --tb=short -rA -m gpu \
    tests/eval/test_generate.py tests/models/test_kv_cache.py tests/eval/test_speculative.py
  cp "$LOG_DIR/cuda_tests.log" "$OUT/cuda_tests.log"
}
stage_attention_ab() {
  local variant
  local -A options=([flex]="" [math]="--attention math" [one_kv]="--kv one")
  for variant in flex math one_kv; do
    # shellcheck disable=SC2086  # the options are words
    step "attention_$variant" 190 python3 bench/decode_probe.py "$variant" ${options[$variant]} --long
    grep "^{" "$LOG_DIR/attention_$variant.log" | tail -1 > "$OUT/attention_$variant.json"
  done
}
stage_verify_ab() {
  local variant
  local -A options=([shipped]="" [reduce]="--small-m reduce --tune all")
  for variant in shipped reduce; do
    # shellcheck disable=SC2086  # the options are words
    step "verify_$variant" 200 python3 bench/decode_probe.py "$variant" --cases b1_t0.0_p1.0 \
      --speculative ${options[$variant]}
    grep "^{" "$LOG_DIR/verify_$variant.log" | tail -1 > "$OUT/verify_$variant.json"
  done
}
stage_options_ab() {
  local variant
  local -A options=([shipped]="" [pdl]="--inductor triton.enable_pdl=True"
    [combo]="--inductor combo_kernels=True")
  for variant in shipped pdl combo; do
    # shellcheck disable=SC2086  # the options are words
    step "options_$variant" 150 python3 bench/decode_probe.py "$variant" \
      --long --cases b1_t0.0_p1.0,long_b1 --profile "$WORK/options_profiles" ${options[$variant]}
    grep "^{" "$LOG_DIR/options_$variant.log" | tail -1 > "$OUT/options_$variant.json"
  done
  tar -czf "$OUT/options_profiles.tar.gz" -C "$WORK" options_profiles
}
stage_splits_ab() {
  local splits
  for splits in shipped 4 8 16; do
    local option=()
    [ "$splits" = shipped ] || option=(--kv-splits "$splits")
    step "splits_$splits" 110 python3 bench/decode_probe.py "$splits" --long \
      --cases b1_t0.0_p1.0,long_b1,b20_t0.2_p0.95 "${option[@]}"
    grep "^{" "$LOG_DIR/splits_$splits.log" | tail -1 > "$OUT/splits_$splits.json"
  done
}
stage_eval_ab() {
  step eval_now 200 python3 bench/eval_probe.py now
  grep "^{" "$LOG_DIR/eval_now.log" | tail -1 > "$OUT/eval_now.json"
  [ -n "${AB_OLD:-}" ] || return 0
  # -P: no current directory first on sys.path, so PYTHONPATH says which wmtp is imported
  step eval_before 200 env PYTHONPATH="$AB_OLD:$PYTHONPATH" python3 -P bench/eval_probe.py before
  grep "^{" "$LOG_DIR/eval_before.log" | tail -1 > "$OUT/eval_before.json"
}
stage_profile() {
  mkdir -p "$WORK/profile"
  step profile 200 "${DECODE[@]}" --flavour llama-1b-bench --n-future-tokens 4 --prompts 1 \
    --new-tokens 32 --batch 32 --profile "$WORK/profile/step" --out "$WORK/profile/decode.json"
  tar -czf "$OUT/profile.tar.gz" -C "$WORK" profile
}
stage_decode_model() {
  local started=$SECONDS
  step decode_model 300 python3 -m wmtp.cli run recipes/gpu_2x.toml --set data.packing=true \
    --set parallel.compile=true --set training.max_steps=300 --set "$(runs decode_model)"
  local loss  # the last logged loss: trainings of this recipe differ (h200_decode.md)
  loss=$(python3 -c "import sys; from pathlib import Path; from wmtp.train.metrics import read_metrics
losses = [m['loss'] for m in read_metrics(Path(sys.argv[1])) if 'loss' in m]
print(losses[-1] if losses else 'null')" "$(latest decode_model)" 2>/dev/null)
  echo "{\"train_s\": $((SECONDS - started)), \"final_loss\": ${loss:-null}}" > "$OUT/decode_model.json"
}
stage_decode_trained() {
  step decode_trained 150 "${DECODE[@]}" --checkpoint "$(latest decode_model)" --prompts 5 \
    --new-tokens 256 --out "$OUT/decode_trained.json"
  step decode_trained_sampled 240 "${DECODE[@]}" --checkpoint "$(latest decode_model)" \
    --prompts 5 --new-tokens 256 "${SAMPLED[@]}" --also-eager \
    --out "$OUT/decode_trained_sampled.json"
}
pack_samples() {  # an evaluation's samples and problems as one archive, and its summary beside
  # it (the device returns 8 files a call, none more than two folders down)
  local dir=$1/humaneval
  [ -f "$dir/samples.jsonl" ] || return 0
  tar -czf "$1/samples.tar.gz" -C "$dir" samples.jsonl problems.jsonl && rm "$dir"/*.jsonl
  cp "$dir/summary.json" "$1/summary.json" 2>/dev/null
}
HUMANEVAL=(--no-progress --set evaluation.n_samples=20 --set "evaluation.k=[1,10]"
  --set evaluation.max_new_tokens=512 --set evaluation.temperature=0.2 --set evaluation.top_p=0.95
  --include-seen)
stage_humaneval() {
  need_humaneval
  step humaneval 400 python3 -m wmtp.cli eval "$(latest decode_model)" "${HUMANEVAL[@]}" \
    --out "$OUT/humaneval_n20"
  pack_samples "$OUT/humaneval_n20"
}
stage_humaneval_wide() {
  need_humaneval
  step humaneval_wide 300 python3 -m wmtp.cli eval "$(latest decode_model)" "${HUMANEVAL[@]}" \
    --set evaluation.batch_size=128 --out "$OUT/humaneval_n20_b128"
  pack_samples "$OUT/humaneval_n20_b128"
}
stage_decode_ab() {  # the agreeing-heads runs with $AB_OLD's package, then with this one
  local when path
  mkdir -p "$OUT/ab"
  for when in before after; do
    # -P: no current directory first on sys.path, so PYTHONPATH says which wmtp is imported
    path=$PYTHONPATH
    [ "$when" = before ] && path=${AB_OLD:?set AB_OLD to a folder holding the earlier wmtp/}:$path
    env PYTHONPATH="$path" python3 -P -c "import wmtp; print('$when:', wmtp.__file__)"
    step "ab_1b_$when" 150 env PYTHONPATH="$path" python3 -P -m wmtp.cli bench decode "${ONE_B[@]}" \
      --agreeing-heads --out "$OUT/ab/decode_1b_$when.json"
  done
  for when in before after; do
    path=$PYTHONPATH
    [ "$when" = before ] && path=$AB_OLD:$path
    step "ab_7b_$when" 150 env PYTHONPATH="$path" python3 -P -m wmtp.cli bench decode \
      --flavour llama2-7b-mtp --prompts 2 --new-tokens 128 --agreeing-heads \
      --out "$OUT/ab/decode_7b_$when.json"
  done
}

[ $# -eq 0 ] && set -- decode_1b decode_1b_peers decode_1b_sampled decode_7b decode_model decode_trained humaneval
run_stages "$@"
python3 bench/summarise_decode.py --results "$OUT" --script "bash bench/h200_decode.sh $*" \
  2>&1 | tee "$LOG_DIR/summary.log"
pack_logs
