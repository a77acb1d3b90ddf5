#!/usr/bin/env bash
# Issue 9 on a machine with two GPUs, in one command (about 7 minutes on two H200s):
#   bash bench/multi_gpu.sh      (with storage/datasets/humaneval carried: the built HumanEval)
# Writes $OUT/multi_gpu.json + multi_gpu.md (bench/summarise_multi_gpu.py), every run's log under
# $OUT/logs/ and metrics under $OUT/runs/; checkpoints stay in $WORK (never fetched back).
# They run in the order 1-2, 6, 5, 4, 3 (what matters most first; nothing runs past END_S
# seconds, so the summary is always written):
#   1. recipes/gpu_2x.toml 1 GPU (grad_accum 2) vs 2 GPUs full_shard (accum 1): same global batch
#   2. tokens/s and MFU of both (from metrics.jsonl)
#   3. shard_grad_op and no_shard train a few steps on 2 GPUs
#   4. tiny critic, then tiny verifiable on 2 GPUs (critic sharded); per-rank EMA statistics
#   5. checkpoints: saved on 2 GPUs -> resumed on 1 GPU and on CPU; saved on 1 -> resumed on 2
#   6. WMTP_FAULT raise / SIGKILL of rank 1: every rank ends within the timeout
# WMTP_MULTI_GPU_CPU=1: the same script on CPU with 2 gloo processes and tiny models (dry run).
set -u
if [ "${WMTP_MULTI_GPU_CPU:-0}" = 1 ]; then
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
  DEV=cpu STEPS=6 BIG=recipes/tiny.toml
  BIG_SETS=(--set training.micro_batch_size=2 --set training.schedule.warmup_steps=1
            --set training.log_every=1 --set training.eval_every=0 --set training.checkpoint_every=0)
  SMALL_SETS=()
  ONE_GPU=() OTHER_GPU=()
else
  source bench/device_setup.sh || exit 1
  DEV=cuda STEPS=50 BIG=recipes/gpu_2x.toml BIG_SETS=()
  SMALL_SETS=(--set "model.policy.flavour='small'" --set model.policy.max_seq_len=2048
              --set training.micro_batch_size=8)
  ONE_GPU=(env CUDA_VISIBLE_DEVICES=0) OTHER_GPU=(env CUDA_VISIBLE_DEVICES=1)
fi
OUT=${OUT:?set OUT to the folder for the results}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/wmtp_multi_gpu}
export WMTP_DIST_TIMEOUT_S=${WMTP_DIST_TIMEOUT_S:-60}
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT/logs"
source bench/steps.sh
need_humaneval
TINY=(recipes/tiny.toml --set "parallel.device='$DEV'" --set training.micro_batch_size=2
      --set training.schedule.warmup_steps=1 --set training.log_every=1 --set training.eval_every=0)

nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/logs/gpus.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.device_count())" > "$OUT/logs/torch.txt" 2>&1

# 1-2. parity and throughput: the same global batch on 1 and 2 devices.
step one_gpu 240 "${ONE_GPU[@]}" python3 -m wmtp.cli run $BIG "${BIG_SETS[@]}" \
  --set "parallel.device='$DEV'" --set training.max_steps=$STEPS --set training.grad_accum_steps=2 \
  --set "parallel.sharding='full_shard'" --set "$(runs one_gpu)"
drop_checkpoints one_gpu
WMTP_RANK_STATE_DIR=$WORK/two_gpu_state step two_gpu 240 python3 -m wmtp.cli run $BIG --nproc-per-node 2 \
  "${BIG_SETS[@]}" --set "parallel.device='$DEV'" --set training.max_steps=$STEPS \
  --set training.grad_accum_steps=1 --set "parallel.sharding='full_shard'" --set "$(runs two_gpu)"
drop_checkpoints two_gpu

# 4-5 (first half), two single-device runs side by side: the tiny critic on device 0 and a
# checkpointed tiny run on device 1 (checkpoints at steps 2 and 4).
CK=(--set training.max_steps=4 --set training.checkpoint_every=2 --set training.keep_last=2
    --set "parallel.sharding='full_shard'")
step critic 150 "${ONE_GPU[@]}" python3 -m wmtp.cli run recipes/tiny_critic.toml \
  --set "parallel.device='$DEV'" --set training.max_steps=6 --set training.schedule.warmup_steps=1 \
  --set training.eval_every=0 --set training.checkpoint_every=0 --set "$(runs critic)" &
step save_on_1 150 "${OTHER_GPU[@]}" python3 -m wmtp.cli run "${TINY[@]}" "${CK[@]}" \
  --set training.grad_accum_steps=2 --set "$(runs save_on_1)" &
wait

# 6. failures: rank 1 raises / is killed after step 2; the job must end well within the limit.
for kind in raise sigkill; do
  WMTP_FAULT="rank=1,step=2,kind=$kind" step "fault_$kind" 120 python3 -m wmtp.cli run "${TINY[@]}" \
    --nproc-per-node 2 --set training.max_steps=6 --set training.checkpoint_every=0 \
    --set "parallel.sharding='full_shard'" --set "$(runs fault_$kind)"
done

# 5. sharded checkpoints across world sizes. A copy of a run without its step-4 checkpoint resumes
# from step 2 at another world size; its steps 3-4 and step-4 export must repeat the original's.
step save_on_2 150 python3 -m wmtp.cli run "${TINY[@]}" "${CK[@]}" --nproc-per-node 2 --set "$(runs save_on_2)"
resume_copy() {  # resume_copy SRC DST: DST/run = SRC's run without its last checkpoint
  mkdir -p "$WORK/$2" && cp -r "$(latest "$1")" "$WORK/$2/run"
  rm -rf "$WORK/$2/run/checkpoints/step-4" && echo "$WORK/$2/run"
}
step resume_2_on_1 150 "${ONE_GPU[@]}" python3 -m wmtp.cli run --resume "$(resume_copy save_on_2 resume_2_on_1)" \
  --force --set training.grad_accum_steps=2 &
step resume_2_on_cpu 150 env CUDA_VISIBLE_DEVICES= python3 -m wmtp.cli run \
  --resume "$(resume_copy save_on_2 resume_2_on_cpu)" --force --set training.grad_accum_steps=2 \
  --set "parallel.device='cpu'" &
wait
step resume_1_on_2 150 python3 -m wmtp.cli run --resume "$(resume_copy save_on_1 resume_1_on_2)" --force \
  --nproc-per-node 2 --set training.grad_accum_steps=1

# 4. verifiable on 2 devices: the policy weighted by the critic, which is sharded too.
WMTP_RANK_STATE_DIR=$WORK/verifiable_state step verifiable 150 python3 -m wmtp.cli run recipes/tiny_verifiable.toml \
  --nproc-per-node 2 --set "parallel.device='$DEV'" --set "parallel.sharding='full_shard'" \
  --set training.max_steps=8 --set training.micro_batch_size=2 --set training.schedule.warmup_steps=1 \
  --set training.log_every=1 --set training.eval_every=0 --set training.checkpoint_every=0 \
  --set "model.critic.checkpoint='$(latest critic)'" --set "$(runs verifiable)"

# 3. the other sharding strategies train (the small flavour on GPU, a few steps).
for sharding in shard_grad_op no_shard; do
  step "$sharding" 150 python3 -m wmtp.cli run $BIG --nproc-per-node 2 "${BIG_SETS[@]}" "${SMALL_SETS[@]}" \
    --set "parallel.device='$DEV'" --set training.max_steps=6 --set training.schedule.warmup_steps=1 \
    --set "parallel.sharding='$sharding'" --set "$(runs $sharding)"
  drop_checkpoints "$sharding"
done

# Results: metrics and per-rank state into $OUT, then the summary.
for d in "$WORK"/*/; do
  name=$(basename "$d")
  for f in "$d"*/*/metrics.jsonl "$d"run/metrics.jsonl; do
    [ -f "$f" ] && mkdir -p "$OUT/runs/$name" && cp "$f" "$(dirname "$f")/recipe.toml" "$OUT/runs/$name/" 2>/dev/null
  done
  case $name in *_state) mkdir -p "$OUT/runs/$name" && cp "$d"*.jsonl "$OUT/runs/$name/" ;; esac
done
python3 bench/summarise_multi_gpu.py --work "$WORK" --out "$OUT" --device "$DEV"
fit_out  # at most the 8 files the device brings back: past that, the rest in results.tar.gz
