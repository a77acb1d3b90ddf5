#!/usr/bin/env bash
# One H100 (or any single GPU): issue 7's decoding figures on a trained 4-head model and issue 8's
# suite, in one command (carry .whl, storage/datasets/humaneval):
#   bash bench/h100.sh STAGE...
# Stages, in the order given (none runs past END_S seconds of the call):
#   tests         the CUDA-only tests (CUDA-graph decoding = eager decoding, exact greedy)
#   decode_model  recipes/gpu_2x.toml (1.1B, 4 heads) packed + compiled, 300 steps on this GPU
#   decode        `wmtp bench decode` of that model: plain vs self-speculative, CUDA graphs and eager
#   profile       bench/decode_profile.py: kernels and host/GPU time of an eager decoding step
#   suite         `wmtp bench suite` (HF peer, ntp, mtp4 per-head and joint, verifiable)
#   attention     `wmtp bench attention`
# Results land in $OUT (decode.json, decode_profile.*, h100_suite.*, attention tables, logs.tar.gz).
set -u
source bench/device_setup.sh || exit 1
OUT=${OUT:?set OUT to the folder for the results}
WORK=${WORK:-/tmp/wmtp_h100}
mkdir -p "$WORK"
export STEPS_FILE=$OUT/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
need_humaneval

stage_tests() {
  step tests 120 python3 -m pytest -p no:cacheprovider -q tests/models/test_kv_cache.py \
    tests/eval/test_speculative.py tests/eval/test_generate.py
}
stage_decode_model() {
  step decode_model 300 python3 -m wmtp.cli run recipes/gpu_2x.toml --set data.packing=true \
    --set parallel.compile=true --set training.max_steps=300 --set "$(runs decode_model)"
}
stage_decode() {
  step decode 300 python3 -m wmtp.cli bench decode --checkpoint "$(latest decode_model)" \
    --prompts 5 --new-tokens 256 --also-eager --out "$OUT/decode.json"
}
stage_profile() {
  step profile 120 python3 bench/decode_profile.py --checkpoint "$(latest decode_model)" --out "$OUT"
}
stage_suite() {
  step suite 420 python3 -m wmtp.cli bench suite --out "$OUT"
}
stage_attention() {
  step attention 480 python3 -m wmtp.cli bench attention --out "$OUT"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$LOG_DIR/gpus.txt" 2>&1
for stage in "$@"; do
  echo "### stage $stage (${SECONDS}s)"
  "stage_$stage"
done
mkdir -p "$OUT/logs"
cp "$LOG_DIR"/* "$OUT/logs/" 2>/dev/null
for f in "$WORK"/*/*/*/metrics.jsonl; do
  [ -f "$f" ] && d=$OUT/logs/runs/$(basename "$(dirname "$(dirname "$(dirname "$f")")")") &&
    mkdir -p "$d" && cp "$f" "$(dirname "$f")/recipe.toml" "$d/" 2>/dev/null
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
ls -la "$OUT"
