"""torchtitan's step under torch.profiler, summarised as `wmtp bench step --profile` summarises
wmtp's (wmtp.bench.step.profile_calls: the same kernel kinds, idle time and operator tables), so
the two GPU timelines compare line by line (GPU probe, issue 20).

    python3 bench/profile_titan.py --shape full1b --micro-batch 16 [--float8] --out DIR

Builds the `titan` (or `titan+float8`) side of `wmtp bench peers` at the shape's model (--set
changes the shape's recipe as `wmtp bench peers --set` does), runs --warmup steps (compilation
included), then profiles --steps more: DIR/titan[_float8].txt, and on a GPU .timeline.json and
.trace.json.gz. `--device cpu --no-compile` runs the same on the CPU (the tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from wmtp.bench import titan_peer
from wmtp.bench.hf_peer import synthetic_batch
from wmtp.bench.peers import peer_args, shape_recipe
from wmtp.bench.step import profile_calls
from wmtp.bench.timing import static_compile_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="full1b")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--float8", action="store_true")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        static_compile_shapes()
    recipe = shape_recipe(args.shape, heads=1, micro_batch=args.micro_batch, overrides=args.set)
    model_args, seq_len = peer_args(recipe), recipe.data.max_length
    name = "titan" + ("+float8" if args.float8 else "") + ("+no-compile" if args.no_compile else "")
    config = titan_peer.TitanConfig(name, compile=not args.no_compile, float8=args.float8)
    reason = titan_peer.unavailable(config, model_args, device)
    if reason:
        raise SystemExit(f"{name}: {reason}")
    peer = titan_peer.build_side(model_args, config, seq_len, device)
    tokens, labels = synthetic_batch(model_args.vocab_size, args.micro_batch, seq_len, device)
    for _ in range(args.warmup):
        peer.step(tokens, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stem = args.out / name.replace("+", "_")
    profile_calls(lambda: peer.step(tokens, labels), stem, steps=args.steps, device=device)
    print(stem.with_name(stem.name + ".txt").read_text()[:3000])


if __name__ == "__main__":
    main()
