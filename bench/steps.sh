# Step helpers of the bench scripts (sourced; needs OUT and WORK set):
#   step LABEL TIMEOUT_S CMD...  run CMD bounded by `timeout`, log to $LOG_DIR/LABEL.log, record its
#                                exit status and wall time in $STEPS_FILE; never stops the
#                                script. No step runs past END_S seconds of the script (its limit
#                                is cut; with under 20 s left it is skipped, rc -1), so a summary is
#                                always written within one 600-second command.
#   run_stages STAGE...          each stage_STAGE function in turn; pack_logs: $LOG_DIR -> $OUT/logs.tar.gz,
#                                then $OUT fitted to what the device brings back (fit_out: at most
#                                8 files; past that the top-level summaries and archives stay,
#                                results.tar.gz takes the rest)
#   runs LABEL                   the --set that puts a run's directory under $WORK/LABEL
#   latest LABEL                 that run's directory
#   drop_checkpoints LABEL       delete its checkpoints (disk)
LOG_DIR=${LOG_DIR:-$OUT/logs}
mkdir -p "$LOG_DIR"
STEPS_FILE=${STEPS_FILE:-$OUT/steps.jsonl}
[ -f "$STEPS_FILE" ] || : > "$STEPS_FILE"
END_S=${END_S:-560}
step() {
  local label=$1 limit=$2; shift 2
  local start=$(date +%s.%N)
  local left=$((END_S - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "== $label: skipped (${left}s left of END_S=${END_S})" | tee "$LOG_DIR/$label.log"
    printf '{"label": "%s", "rc": -1, "seconds": 0, "limit_s": %d}\n' "$label" "$limit" >> "$STEPS_FILE"
    return
  fi
  echo "== $label: $*" | tee "$LOG_DIR/$label.log"
  timeout -k 10 "$limit" "$@" >> "$LOG_DIR/$label.log" 2>&1
  local rc=$?
  local took=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  echo "   rc=$rc in ${took}s"
  printf '{"label": "%s", "rc": %d, "seconds": %s, "limit_s": %d}\n' "$label" "$rc" "$took" "$limit" >> "$STEPS_FILE"
}
runs() { echo "experiment.runs_dir='$WORK/$1'"; }
latest() { readlink -f "$WORK/$1"/*/latest; }
drop_checkpoints() { rm -rf "$WORK/$1"/*/*/checkpoints; }
need_humaneval() {  # the built HumanEval must have travelled (carry storage/datasets/humaneval)
  local he=storage/datasets/humaneval/v$(python3 -c "from wmtp.data.humaneval import VERSION; print(VERSION)")-heldout0.1
  [ -f "$he/build_info.json" ] || { echo "no built HumanEval at $he: carry storage/datasets/humaneval"; exit 1; }
}
run_stages() {  # run_stages STAGE...: each function stage_STAGE in turn, the GPUs noted first
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$LOG_DIR/gpus.txt" 2>&1
  local stage
  for stage in "$@"; do
    echo "### stage $stage (${SECONDS}s)"
    "stage_$stage"
  done
}
pack_logs() {  # $LOG_DIR's files as $OUT/logs.tar.gz, $OUT fitted to the device, what it holds
  mkdir -p "$OUT/logs"
  cp "$LOG_DIR"/* "$OUT/logs/" 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  fit_out
  ls -la "$OUT"
}
DEVICE_FILES=8  # the device machine brings back at most this many files from $OUT (16 MiB each)
fit_out() {  # over DEVICE_FILES files under $OUT: the top-level summaries (*.md, *.json), then its
  # archives (*.tar.gz), then its other files stay as they are while they fit beside one more
  # file, $OUT/results.tar.gz, which takes the rest (folders and all)
  [ "$(find "$OUT" -type f | wc -l)" -le "$DEVICE_FILES" ] && return
  local keep rest=() f
  keep=" $(cd "$OUT" && { ls -1 -- *.md *.json; ls -1 -- *.tar.gz; ls -1p | grep -v /; } 2>/dev/null |
    awk '!seen[$0]++' | head -n $((DEVICE_FILES - 1)) | tr '\n' ' ')"
  for f in "$OUT"/* "$OUT"/.[!.]*; do
    [ -e "$f" ] || continue
    case "$keep" in *" $(basename "$f") "*) ;; *) rest+=("$(basename "$f")") ;; esac
  done
  tar -czf "$OUT/results.tar.gz" -C "$OUT" -- "${rest[@]}" && (cd "$OUT" && rm -rf -- "${rest[@]}")
}
