source bench/device_setup.sh || exit 1
mkdir -p $OUT/p
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv > $OUT/p/gpu.txt
timeout 150 python3 scratch/fp8_probe.py $OUT/p/fp8_probe.json > $OUT/p/fp8_probe.log 2>&1; echo "probe rc=$?"; cat $OUT/p/fp8_probe.log | tail -3
clocked() {  # clocked NAME CMD...: the command with the SM clock and power sampled every 100 ms
  local name=$1; shift
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu,temperature.gpu --format=csv,noheader -lms 100 > $OUT/p/$name.clock.csv &
  local smi=$!
  timeout 200 "$@" > $OUT/p/$name.log 2>&1; echo "$name rc=$?: $(grep -h 'tokens/s' $OUT/p/$name.log | tail -1)"
  kill $smi
}
LORA=(python3 -m wmtp.cli bench step recipes/baseline.toml --set "model.policy.path=''" --set "tokenizer={kind='byte'}" --set training.micro_batch_size=1)
clocked step_acc1 "${LORA[@]}" --set training.grad_accum_steps=1 --warmup 3 --repeats 5 --out $OUT/p/step_acc1
clocked profiled_acc1 "${LORA[@]}" --set training.grad_accum_steps=1 --warmup 3 --repeats 5 --profile 2 --out /tmp/prof_acc1
ls /tmp/prof_acc1 > $OUT/p/prof_files.txt; cp /tmp/prof_acc1/*.txt $OUT/p/ 2>/dev/null
cd $OUT/p && tar czf ../p.tar.gz . && cd .. && rm -rf p
