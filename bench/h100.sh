#!/usr/bin/env bash
# One H100 (or any single GPU): issue 7's decoding figures on a trained 4-head model and issue 8's
# suite, in one command (carry .whl, storage/datasets/humaneval):
#   bash bench/h100.sh STAGE...
# Stages, in the order given (none runs past END_S seconds of the call):
#   tests         the CUDA-only tests (CUDA-graph decoding = eager decoding, exact greedy; the
#                 compiled cross-entropy kernels = eager) and the attention and loss tests
#   decode_model  recipes/gpu_2x.toml (1.1B, 4 heads) packed + compiled, 300 steps on this GPU
#   decode        `wmtp bench decode` of that model: plain vs self-speculative, CUDA graphs and eager
#   profile       `wmtp bench decode --profile` of that model: torch.profiler traces of plain
#                 decoding at batch 1 and at an evaluation's batch ($OUT/decode_profile.*)
#   suite         `wmtp bench suite` (HF peer, ntp, mtp4 per-head and joint, verifiable)
#   flash_attn    flash-attn into /tmp/fa_site (later stages and later calls of a warm machine
#                 import it): unpacked from .fa/fa_site-*.tar.xz when an earlier lease built it,
#                 else built from .fa/'s sdist (bench/flash_attn_build.sh, ~9 min; carry .fa)
#   gpu_check     python -m wmtp.models.gpu_check: every attention backend (flash_attn too, once
#                 built) against fp32 eager, forward and backward, and in a small model
#   flash_attn_pack   that build as $OUT/fa_site-*.tar.xz (keep it in .fa/ to skip the build)
#   attention     `wmtp bench attention`
#   attention_ranking  the same, 5 rounds, recording the ranking `auto` uses ($OUT/attention_table.json)
#   attention_confirm  again, with `auto` reading that table (WMTP_ATTENTION_TABLE)
# Results land in $OUT (decode.json, decode_profile.*, h100_suite.*, attention tables, logs.tar.gz).
set -u
source bench/device_setup.sh || exit 1
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_h100}
mkdir -p "$WORK"
export STEPS_FILE=$OUT/steps.jsonl LOG_DIR=$WORK/logs
source bench/steps.sh
need_humaneval

stage_tests() {
  step tests 180 python3 -m pytest -p no:cacheprovider -q tests/models/test_kv_cache.py \
    tests/eval/test_speculative.py tests/eval/test_generate.py tests/losses \
    tests/models/test_attention.py tests/models/test_attention_table.py
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
  step profile 180 python3 -m wmtp.cli bench decode --checkpoint "$(latest decode_model)" \
    --prompts 1 --new-tokens 64 --profile "$OUT/decode_profile" --out "$OUT/decode_profiled.json"
}
stage_suite() {
  step suite 420 python3 -m wmtp.cli bench suite --out "$OUT"
}
stage_flash_attn() {  # detached, so a build that outlasts this call goes on for the next one
  local built
  built=$(ls .fa/fa_site-*.tar.xz 2>/dev/null | head -1)
  if [ ! -d /tmp/fa_site/flash_attn ] && [ -n "$built" ]; then  # an earlier lease's build
    tar -xJf "$built" -C /tmp && PYTHONPATH=/tmp/fa_site python3 -c "import torch, flash_attn_2_cuda" &&
      echo "flash-attn: unpacked $built" && echo 0 > /tmp/fa_build.rc || rm -rf /tmp/fa_site
  fi
  if [ ! -f /tmp/fa_build.rc ] && ! kill -0 "$(cat /tmp/fa_build.pid 2>/dev/null)" 2>/dev/null; then
    FA_LOG=/tmp/fa_build.log setsid nohup bash bench/flash_attn_build.sh </dev/null >/dev/null 2>&1 &
    echo $! > /tmp/fa_build.pid
  fi
  while [ ! -f /tmp/fa_build.rc ] && [ "$SECONDS" -lt $((END_S - 30)) ]; do sleep 10; done
  cp /tmp/fa_build.log "$LOG_DIR/fa_build.log" 2>/dev/null
  grep -E "units compiled|rc=" /tmp/fa_build.log 2>/dev/null | tail -2
  [ -d /tmp/fa_site/flash_attn ] && export PYTHONPATH=$PYTHONPATH:/tmp/fa_site
}
stage_flash_attn_pack() {  # the build, for .fa/ here: later leases unpack it in seconds
  local torch_tag
  torch_tag=$(python3 -c "import torch; print(torch.__version__.replace('+', '-'))")
  tar -cf - -C /tmp fa_site | xz -T16 -6 > "$OUT/fa_site-2.8.3.post2-torch$torch_tag-sm90.tar.xz"
}
stage_gpu_check() {
  step gpu_check 240 python3 -m wmtp.models.gpu_check --out "$OUT/gpu_check.json"
}
stage_attention() {
  step attention 480 python3 -m wmtp.cli bench attention --out "$OUT"
}
stage_attention_ranking() {  # measure, and rank the backends into a table for `auto`
  step attention_ranking 300 python3 -m wmtp.cli bench attention --out "$OUT/ranked" --rounds 5 \
    --record "$OUT/attention_table.json"
}
stage_attention_confirm() {  # measure again, with `auto` choosing from that table
  step attention_confirm 300 env WMTP_ATTENTION_TABLE="$OUT/attention_table.json" \
    python3 -m wmtp.cli bench attention --out "$OUT/confirm" --rounds 5 --no-sweep
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
fit_out  # at most the 8 files the device brings back: past that, the rest in results.tar.gz
ls -la "$OUT"
