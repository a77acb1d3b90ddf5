# GPU call: the sync tests, then the LoRA step at micro-batch 1 with and without CUDA graphs
source bench/device_setup.sh || exit 1
mkdir -p $OUT/t $OUT/cg
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/t/gpu.txt
if [ -z "${SKIP_TESTS:-}" ]; then
  WMTP_SANDBOX=rlimits timeout 240 python3 -m pytest -q -p no:cacheprovider tests/train/test_step_sync.py > $OUT/t/sync.txt 2>&1; echo rc=$? >> $OUT/t/sync.txt; tail -3 $OUT/t/sync.txt
fi
ACCUM=${ACCUM:-1}
run() {  # run NAME ONE_BACKWARD GRAPHS
  local t0=$SECONDS
  PROBE_ONE_BACKWARD=$2 TORCHINDUCTOR_CUDAGRAPHS=$3 timeout 200 python3 scratch/cg_probe.py bench step recipes/baseline.toml \
    --set "model.policy.path=''" --set "tokenizer={kind='byte'}" --set training.micro_batch_size=1 \
    --set training.grad_accum_steps=$ACCUM --warmup 3 --repeats ${REPEATS:-5} --out $OUT/cg/$1 > $OUT/cg/$1.log 2>&1
  echo "$1 rc=$? $((SECONDS - t0))s: $(grep -h 'tokens/s' $OUT/cg/$1.log | tail -1)"
}
for spec in ${RUNS:-seq_0:0:0 one_0:1:0 one_1:1:1 one_1b:1:1 one_0b:1:0 seq_0b:0:0}; do
  IFS=: read name ob g <<< "$spec"; run ${name}_acc$ACCUM $ob $g
done
