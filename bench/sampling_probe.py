"""The choice of tokens at batch 20, timed: ``generate`` of ``llama-1b-bench`` (random weights,
one 256-token prompt, 256 new tokens) at 20 rows sampled at 0.2 with top-p 0.95 and without,
20 rows greedy and 1 row greedy; five timed calls each after a warm-up (their median and range
as ``wmtp bench decode --peers`` reports them). One GPU; prints one JSON line.

    python3 bench/sampling_probe.py LABEL

LABEL names the run. An earlier package beside this one, in the same call:
``PYTHONPATH=DIR:$PYTHONPATH python3 -P bench/sampling_probe.py before`` (DIR/wmtp from
``git archive REV wmtp | tar -x -C DIR``)."""

import json
import sys

import torch

import wmtp
from wmtp.bench.decode_peers import rates
from wmtp.bench.timing import wall_seconds_repeated
from wmtp.eval.generate import Sampling, StopRule, generate
from wmtp.eval.speed import model_from_flavour, random_prompts

label = sys.argv[1]
device = torch.device("cuda")
model = model_from_flavour("llama-1b-bench", n_future_tokens=4, dtype="bfloat16", device="cuda")
prompt = random_prompts(32000, 1, 256)[0]
never = StopRule(lambda ids: "", stop=(), eos_id=None)
out = {"label": label, "wmtp": wmtp.__file__}
cases = [(20, Sampling(0.2, 0.95)), (20, Sampling(0.2, 1.0)), (20, Sampling()), (1, Sampling())]
with torch.inference_mode():
    for rows, s in cases:
        gen = None if s.greedy else torch.Generator(device=device).manual_seed(0)

        def call(rows=rows, s=s, gen=gen):
            return generate(
                model,
                [prompt] * rows,
                never,
                max_new_tokens=256,
                sampling=s,
                generator=gen,
                batch_size=rows,
            )

        call()
        key = f"b{rows}_t{s.temperature}_p{s.top_p}"
        out |= rates(key, rows * 256, wall_seconds_repeated(device, call, 5)[1])
        print(label, key, out[f"{key}_tokens_per_s"], file=sys.stderr, flush=True)
print(json.dumps(out))
