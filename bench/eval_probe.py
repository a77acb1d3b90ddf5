"""An evaluation's decoding without the evaluation: ``decode_rows`` as ``wmtp eval`` calls it
(``problems`` prompts x ``samples`` rows, ``slots`` rows a step, sampled at 0.2 with top-p
0.95), on ``llama-1b-bench`` with random weights, where the host's time goes.

Each row ends at its own length, drawn (seeded) around a HumanEval run's mean of 191 new tokens
(at most 512), so slots free one or two at a time as in an evaluation; prompts of 500-800
tokens. Prints one JSON line: the wall time, ``StepTally``'s breakdown (host time starting
rows, prompts' forwards, waiting on the device, ms a step), the operations that synchronised
the host with the device (``torch.cuda.set_sync_debug_mode``: the code line of each, counted)
and, for ``--profile-steps`` steps from the middle of the run, the operations with the most
host time (torch.profiler). An earlier package beside this one, in the same call:
``PYTHONPATH=DIR:$PYTHONPATH python3 -P bench/eval_probe.py before`` (DIR/wmtp from
``git archive REV wmtp | tar -x -C DIR``).

    python3 bench/eval_probe.py LABEL [--problems 164] [--samples 20] [--slots 32]
    python3 bench/eval_probe.py dry --device cpu --flavour tiny --problems 3 --samples 4"""

import argparse
import collections
import json
import random
import sys
import time
import warnings

import torch

import wmtp
import wmtp.eval.generate as generate
from wmtp.eval.speed import model_from_flavour

MEAN_NEW_TOKENS = 191
"""627,492 tokens over 3,280 completions: the tenth session's HumanEval run (h200_decode.md)."""


def eval_rows(vocab: int, problems: int, samples: int, max_new: int) -> list:
    """``problems`` random prompts of 500-800 tokens, ``samples`` rows each, every row its own
    seed and length (exponential around ``MEAN_NEW_TOKENS``, 1 to ``max_new``)."""
    rng = random.Random(0)
    never = generate.StopRule(lambda ids: "", stop=(), eos_id=None)
    rows = []
    for p in range(problems):
        prompt = [1] + [rng.randrange(2, vocab) for _ in range(rng.randrange(500, 800))]
        for s in range(samples):
            limit = max(1, min(max_new, round(rng.expovariate(1 / MEAN_NEW_TOKENS))))
            rows.append(generate.Row(prompt, never, limit, seed=p * samples + s))
    return rows


class Profiled:
    """torch.profiler over ``steps`` decoding steps starting at step ``first`` (counted by
    ``_Slots.advance``); the host-side operations with the most self time, as rows."""

    def __init__(self, first: int, steps: int):
        self.first, self.last, self.seen = first, first + steps, 0
        self.profiler = None
        self.rows: list[dict] = []

    def advance(self, advance):
        def counted(slots):
            if self.seen == self.first and self.profiler is None and self.last > self.first:
                self.profiler = torch.profiler.profile(activities=self._activities())
                self.profiler.__enter__()
            out = advance(slots)
            self.seen += 1
            if self.seen == self.last and self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                self.rows = self._top(self.profiler)
            return out

        return counted

    @staticmethod
    def _activities():
        return [torch.profiler.ProfilerActivity.CPU]

    def _top(self, profiler, n: int = 30) -> list[dict]:
        averages = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
        steps = self.last - self.first
        parts = [  # the labelled parts' whole host time, what they call included
            {
                "name": e.key,
                "calls_per_step": round(e.count / steps, 2),
                "host_us_per_step": round(e.cpu_time_total / steps, 1),
            }
            for e in averages
            if e.key.startswith("probe.")
        ]
        return parts + [
            {
                "name": e.key,
                "calls_per_step": round(e.count / steps, 2),
                "self_host_us_per_step": round(e.self_cpu_time_total / steps, 1),
            }
            for e in averages[:n]
        ]


def labelled(name: str, method):
    """``method`` under a profiler label ``name``."""

    def run(*args, **kwargs):
        with torch.profiler.record_function(name):
            return method(*args, **kwargs)

    return run


def syncs_of(caught: list) -> dict[str, int]:
    """Synchronising operations by code line, counted."""
    return dict(
        collections.Counter(
            f"{w.filename.rsplit('/wmtp/', 1)[-1]}:{w.lineno}: {str(w.message)[:80]}"
            for w in caught
        ).most_common()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--problems", type=int, default=164)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--profile-steps", type=int, default=300)
    parser.add_argument("--flavour", default="llama-1b-bench")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the code path")
    args = parser.parse_args()
    model = model_from_flavour(
        args.flavour, n_future_tokens=4, dtype="bfloat16", device=args.device
    )
    rows = eval_rows(model.args.vocab_size, args.problems, args.samples, args.max_new_tokens)
    sampling = generate.Sampling(0.2, 0.95)
    # compiling and capturing the steps outside the figures: the longest row among the first
    # ones gives the warm-up the whole run's cache length, so its step shapes
    longest = max(rows, key=lambda r: len(r.prompt) + r.limit)
    warm = generate.StepTally()
    generate.decode_rows(
        model, [*rows[: args.slots + 2], longest], slots=args.slots, sampling=sampling, tally=warm
    )
    total = sum(r.limit for r in rows)
    profiled = Profiled(first=total // args.slots // 2, steps=args.profile_steps)
    generate._Slots.advance = profiled.advance(labelled("probe.advance", generate._Slots.advance))
    generate._Slots.start = labelled("probe.start_rows", generate._Slots.start)
    tally = generate.StepTally()
    cuda = torch.device(args.device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        began = time.perf_counter()
        generate.decode_rows(model, rows, slots=args.slots, sampling=sampling, tally=tally)
        seconds = time.perf_counter() - began
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    out = {
        "label": args.label,
        "wmtp": wmtp.__file__,
        "rows": len(rows),
        "new_tokens": total,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(total / seconds, 1),
        "warm_up": warm.as_dict(),
        "tally": tally.as_dict(),
        "syncs": syncs_of([w for w in caught if "synchroniz" in str(w.message)]),
        "profile_first_step": profiled.first,
        "profile": profiled.rows,
    }
    print(f"{args.label}: {seconds:.1f} s, {out['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
