"""Decode throughput: plain against self-speculative decoding, and time to first token.

Batch size 1 (one request's latency, the MTP paper's setting), on the same prompts, through the
functions ``wmtp eval`` uses (``generate`` and ``speculative_generate`` over the model's KV
cache; on a GPU each decoding step is replayed from a CUDA graph, ``--eager`` launches every kernel
instead and ``--also-eager`` times both). Either a flavour with random weights or a trained
checkpoint::

    python -m wmtp.eval.speed --flavour llama2-7b-mtp --out speed.json
    python -m wmtp.eval.speed --checkpoint runs/baseline/latest --out speed.json

Random weights make the draft heads guess at random: their acceptance rate is about 0, so the
speculative figure is the *overhead* of drafting. ``--agreeing-heads`` rigs the weights (every
block an identity, unembedding = embedding) so that every draft is accepted: the same FLOPs per
forward, the upper bound of the speed-up with n heads. A trained MTP model lies in between; the
MTP paper reports 3.05x on code with 4 heads (7B). ``--temperature T`` (and ``--top-p``) samples
instead of decoding greedily, speculatively by speculative sampling, and reports each draft
head's acceptance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from wmtp.bench import decode_peers
from wmtp.bench.timing import wall_seconds, wall_seconds_repeated
from wmtp.eval.generate import Sampling, StopRule, generate
from wmtp.eval.speculative import (
    GREEDY,
    SpeculativeStats,
    speculative_generate,
    speculative_generate_batch,
)


def never_stop() -> StopRule:
    """Decode exactly ``max_new_tokens``: no text, no stop strings, no EOS."""
    return StopRule(lambda ids: "", stop=(), eos_id=None)


def _decoding_options(
    steps: dict | None, sampling: Sampling, generator: torch.Generator | None
) -> dict:
    """The keyword arguments both decoders take: how to draw, and how steps run."""
    return {"sampling": sampling, "generator": generator, **(steps or {})}


def time_plain(
    model,
    prompt: list[int],
    new_tokens: int,
    steps: dict | None = None,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
) -> dict:
    """Plain decoding of one prompt: seconds to the first token, tokens/s over the rest
    (``steps``: ``cuda_graphs`` and ``compiled`` for the decoder)."""
    device = next(model.parameters()).device
    drawn = _decoding_options(steps, sampling, generator)

    def decode(tokens: int):
        return generate(model, [prompt], never_stop(), max_new_tokens=tokens, **drawn)[0]

    _, first = wall_seconds(device, lambda: decode(1))
    out, seconds = wall_seconds(device, lambda: decode(new_tokens))
    return {"ttft_s": first, "seconds": seconds, "tokens": out.tokens}


def time_speculative(
    model,
    prompt: list[int],
    new_tokens: int,
    steps: dict | None = None,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
) -> tuple[dict, SpeculativeStats]:
    """Self-speculative decoding of one prompt: its seconds and tokens, and its statistics."""
    drawn = _decoding_options(steps, sampling, generator)
    (out, stats), seconds = wall_seconds(
        next(model.parameters()).device,
        lambda: speculative_generate(
            model, prompt, never_stop(), max_new_tokens=new_tokens, **drawn
        ),
    )
    return {"seconds": seconds, "tokens": out.tokens}, stats


def benchmark(
    model,
    prompts: list[list[int]],
    new_tokens: int,
    steps: dict | None = None,
    sampling: Sampling = GREEDY,
    seed: int = 0,
) -> dict:
    """Plain and speculative figures over ``prompts``; decoding steps as ``steps`` says
    (``cuda_graphs``, ``compiled``; default: both on a GPU). Every prompt is decoded once of
    each kind before timing, so compilation and CUDA-graph capture (once per model and step
    shape) happen there: ``setup`` reports their seconds, and those spent inside the timed
    runs (0 when the warm-up met every shape). Sampled (``sampling`` above temperature 0),
    both draw with generators seeded by ``seed``."""
    from wmtp.models.kv_cache import setup_figures

    device = next(model.parameters()).device

    def generator() -> torch.Generator | None:
        return None if sampling.greedy else torch.Generator(device=device).manual_seed(seed)

    plain_gen, spec_gen = generator(), generator()
    for prompt in prompts:
        time_plain(model, prompt, new_tokens, steps, sampling, plain_gen)
        time_speculative(model, prompt, new_tokens, steps, sampling, spec_gen)
    warmed = setup_figures(model)
    plain_runs, spec_runs, totals, identical = [], [], SpeculativeStats(), 0
    for prompt in prompts:
        plain = time_plain(model, prompt, new_tokens, steps, sampling, plain_gen)
        spec, stats = time_speculative(model, prompt, new_tokens, steps, sampling, spec_gen)
        identical += plain["tokens"] == spec["tokens"]
        plain_runs.append(plain)
        spec_runs.append({**spec, "ttft_s": stats.first_token_s})
        totals.add(stats)
    plain_tps = sum(len(r["tokens"]) for r in plain_runs) / sum(r["seconds"] for r in plain_runs)
    spec_tps = sum(len(r["tokens"]) for r in spec_runs) / sum(r["seconds"] for r in spec_runs)
    in_timed_s = setup_figures(model)["setup_s"] - warmed["setup_s"]
    return {
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p},
        "setup": {**warmed, "setup_s_in_timed_runs": round(in_timed_s, 3)},
        "plain": {
            "tokens_per_s": round(plain_tps, 2),
            "ttft_s": round(statistics.median(r["ttft_s"] for r in plain_runs), 5),
        },
        "speculative": {
            "tokens_per_s": round(spec_tps, 2),
            "ttft_s": round(statistics.median(r["ttft_s"] for r in spec_runs), 5),
            "acceptance_rate": round(totals.acceptance_rate, 4),
            "acceptance_by_head": {
                str(k): round(v, 4) for k, v in totals.acceptance_by_head().items()
            },
            "tokens_per_forward": round(totals.tokens_per_forward, 3),
            "speedup": round(spec_tps / plain_tps, 3),
        },
        # sampled, the two draw differently (the same distribution): nothing to compare
        "identical_outputs": f"{identical}/{len(prompts)}" if sampling.greedy else None,
    }


def speculative_peer_figures(
    model, prompt: list[int], new_tokens: int, batch: int, sampling: Sampling, plain: dict
) -> dict:
    """Batched speculative decoding beside plain decoding's peer figures (``plain``: wmtp's
    side of ``decode_peers.peer_figures``): tokens/s at batch 1 (greedy) and at ``batch`` rows
    of ``prompt`` (``sampling``, each row accepting its own drafts), timed as the peers are
    (``decode_peers.rates``), with the acceptance of the batched run and the ratio to plain
    decoding's figure."""
    device = next(model.parameters()).device
    figures: dict[str, object] = {}
    for label, rows, drawn in (("batch1", 1, GREEDY), (f"batch{batch}", batch, sampling)):

        def call(rows=rows, drawn=drawn):
            generator = torch.Generator(device=device).manual_seed(0)
            return speculative_generate_batch(
                model, [prompt] * rows, never_stop(), max_new_tokens=new_tokens,
                sampling=drawn, generator=generator,
            )  # fmt: skip

        call()  # warm-up: step states, compilation, CUDA graph capture
        (made, row_stats), seconds = wall_seconds_repeated(device, call, decode_peers.TIMED_CALLS)
        # the tokens the rows made (a row stops at the model's context), as the peers count
        figures |= decode_peers.rates(label, decode_peers.new_tokens_of(made, len(prompt)), seconds)
        tokens_per_s = figures[f"{label}_tokens_per_s"]
        figures[f"{label}_ratio_vs_wmtp"] = round(tokens_per_s / plain[f"{label}_tokens_per_s"], 3)
    total = SpeculativeStats.of_batch(row_stats)
    figures[f"batch{batch}_acceptance_rate"] = round(total.acceptance_rate, 4)
    figures[f"batch{batch}_tokens_per_forward"] = round(total.tokens_per_forward, 3)
    return figures


def profile_decoding(
    model, prompt: list[int], new_tokens: int, batch: int, sampling: Sampling, path: Path
) -> list[str]:
    """``torch.profiler`` traces of decoding, each after one warm-up call
    (``wmtp.bench.step.profile_calls``: ``<path>.<case>.trace.json.gz`` and ``.txt``): plain
    batch 1 greedy on ``prompt``; ``batch`` plain sampled rows whose cache spans the model's
    context, the shape of an evaluation's longest prompts; and, with extra heads, batch 1
    self-speculative, greedy and sampled (``batch``'s sampling), whose verify steps run every
    head and the verification after them. The cases' names."""
    from wmtp.bench.step import profile_calls

    device = next(model.parameters()).device
    context = model.args.max_seq_len
    long_prompt = (prompt * (context // len(prompt) + 1))[: context - new_tokens]
    cases = {
        "batch1": (generate, [prompt], GREEDY),
        f"batch{batch}_context{context}": (generate, [long_prompt] * batch, sampling),
    }
    if model.n_heads > 1:
        cases["batch1_speculative"] = (speculative_generate_batch, [prompt], GREEDY)
        cases["batch1_speculative_sampled"] = (speculative_generate_batch, [prompt], sampling)
    for case, (decode, prompts, drawn) in cases.items():

        def call(decode=decode, prompts=prompts, drawn=drawn):
            generator = torch.Generator(device=device).manual_seed(0)
            rows = {"batch_size": len(prompts)} if decode is generate else {}
            decode(
                model, prompts, never_stop(), max_new_tokens=new_tokens, sampling=drawn,
                generator=generator, **rows,
            )  # fmt: skip

        call()
        profile_calls(call, path.with_name(f"{path.name}.{case}"), steps=1, device=device)
    return list(cases)


def rig_agreeing_heads(model) -> None:
    """Every block an identity and the unembedding the embedding: all heads predict the current
    token, greedy decoding repeats it, and every draft is accepted (same FLOPs as before)."""
    with torch.no_grad():
        for block in model.blocks():
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        model.output.weight.copy_(model.tok_embeddings.weight)


def random_prompts(vocab_size: int, n: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (n, length), generator=generator).tolist()


def fit_context(prompts: list[list[int]], context: int, new_tokens: int) -> tuple[list, int]:
    """The prompts, each cut to its last ``context - new_tokens`` tokens where longer, so that
    every row decodes all ``new_tokens`` within the model's context (a timed row that stopped
    early would time less work); and how many were cut. A RunError if ``new_tokens`` leaves no
    room for a prompt."""
    from wmtp.errors import RunError

    room = context - new_tokens
    if room < 1:
        raise RunError(
            f"--new-tokens {new_tokens}: the model's context is {context} tokens, so at most "
            f"{context - 1} new tokens follow a one-token prompt"
        )
    cut = sum(len(p) > room for p in prompts)
    return [p[-room:] for p in prompts], cut


def model_from_flavour(name: str, *, n_future_tokens: int | None, dtype: str, device: str):
    """Random weights of a flavour, built by the registry's ``llama_mtp`` builder as a recipe's
    ``[model.policy] flavour = name`` would be (attention ``auto``, for inference)."""
    from wmtp import registry
    from wmtp.recipe.schema import LlamaMTPSpec

    section = {"flavour": name, "dtype": dtype, "attention": "auto"}
    if n_future_tokens is not None:
        section["n_future_tokens"] = n_future_tokens
    spec = LlamaMTPSpec.model_validate(section)
    torch.manual_seed(0)
    build = registry.get("model", spec.kind)
    return build(spec, vocab_size=32000, device=device)  # vocab -1: Llama-2's vocabulary


def model_from_checkpoint(path: str, recipe: str | None, device: str, overrides=()):
    """A trained policy, its tokenizer and how ``wmtp eval`` would show it a problem (run dir,
    step, or checkpoint with a recipe; ``overrides``: ``--set`` on that recipe, a LoRA base
    moved elsewhere)."""
    from wmtp.eval.prompting import prompt_format
    from wmtp.eval.target import load_policy, load_target_recipe, refuse_a_critic, resolve_target

    target = resolve_target(path, recipe=recipe)
    refuse_a_critic(path, target, "wmtp bench decode times a policy's decoding")
    loaded = load_target_recipe(target, overrides).recipe
    trained_template = None if target.pretrained else loaded.data.template
    shown = prompt_format(loaded.evaluation, trained_template)
    return (*load_policy(target, loaded, device), shown)


def humaneval_prompts(tokenizer, n: int, shown) -> list[list[int]]:
    """The first ``n`` HumanEval problems as ``shown`` (a ``PromptFormat``) lays them out."""
    from wmtp.eval.benchmarks import load_humaneval

    problems = load_humaneval().problems[:n]
    return [tokenizer.encode(shown.text(p.prompt), bos=True) for p in problems]


def run(args: argparse.Namespace) -> dict:
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if args.checkpoint:
        model, tokenizer, shown = model_from_checkpoint(
            args.checkpoint, args.recipe, device, args.overrides
        )
        prompts = humaneval_prompts(tokenizer, args.prompts, shown)
        source = {"checkpoint": args.checkpoint, "prompt_layout": shown.as_dict()}
    else:
        model = model_from_flavour(
            args.flavour, n_future_tokens=args.n_future_tokens, dtype=args.dtype, device=device
        )
        prompts = random_prompts(model.args.vocab_size, args.prompts, args.prompt_len)
        source = {"flavour": args.flavour, "weights": "random"}
    prompts, cut = fit_context(prompts, model.args.max_seq_len, args.new_tokens)
    result = {
        **source,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attention": model.attention.name,
        "n_future_tokens": model.n_heads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": len(prompts),
        "prompt_tokens_mean": round(statistics.mean(len(p) for p in prompts), 1),
        "prompts_cut_to_context": cut,  # kept their last (context - new_tokens) tokens
        "new_tokens": args.new_tokens,
        "batch_size": 1,
        "torch": torch.__version__,
    }
    graphs = device == "cuda" and not args.eager
    steps = {"cuda_graphs": graphs, "compiled": graphs and not args.no_compile}
    steps["fused"] = False if args.no_fuse else None  # None: where the fused copy fits
    result["steps"] = steps
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p)
    # batched rows sample, as `wmtp eval` draws n_samples (the recipes' 0.2 / 0.95 when greedy)
    batch_sampling = sampling if not sampling.greedy else Sampling(temperature=0.2, top_p=0.95)
    with torch.inference_mode():
        result["as_loaded"] = benchmark(model, prompts, args.new_tokens, steps, sampling)
        plain_tps = result["as_loaded"]["plain"]["tokens_per_s"]
        result["bandwidth"] = decode_peers.bandwidth_figures(model, plain_tps)
        if args.peers:
            peers = decode_peers.peer_figures(
                model, prompts[0], args.new_tokens, args.batch, batch_sampling
            )
            peers["sides"]["wmtp_speculative"] = speculative_peer_figures(
                model, prompts[0], args.new_tokens, args.batch, batch_sampling,
                peers["sides"]["wmtp"],
            )  # fmt: skip
            result["peers"] = peers
        if args.profile is not None:
            result["profiled"] = profile_decoding(
                model, prompts[0], args.profile_tokens, args.batch, batch_sampling, args.profile
            )
        if graphs and args.also_eager:
            eager = {"cuda_graphs": False, "compiled": False}
            result["as_loaded_eager"] = benchmark(model, prompts, args.new_tokens, eager, sampling)
        if args.also_unfused and not args.no_fuse:
            unfused = steps | {"fused": False}
            result["as_loaded_unfused"] = benchmark(
                model, prompts, args.new_tokens, unfused, sampling
            )
        if args.agreeing_heads:
            rig_agreeing_heads(model)
            result["agreeing_heads"] = benchmark(model, prompts, args.new_tokens, steps, sampling)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wmtp.eval.speed", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--flavour", help="model flavour with random weights (wmtp.models.args)")
    source.add_argument("--checkpoint", help="run dir, checkpoints/step-N, or checkpoint dir")
    parser.add_argument("--recipe", help="recipe for a checkpoint without one beside it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="dotted.key=VALUE on its recipe",
    )
    parser.add_argument("--n-future-tokens", type=int, help="heads (flavour only)")
    parser.add_argument("--dtype", default="bfloat16", help="flavour only (default bfloat16)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--prompts", type=int, default=5, help="prompts to average over")
    parser.add_argument("--prompt-len", type=int, default=256, help="random prompt length")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens decoded per prompt")
    parser.add_argument("--agreeing-heads", action="store_true", help="also the rigged upper bound")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; above: sampled (speculatively)"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus of sampled decoding")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also Hugging Face generate (dynamic cache; static cache + compile on CUDA) and "
        "wmtp's generate and batched speculative decoding at batch 1 and at --batch rows "
        "(sampled at --temperature, or at the recipes' evaluation 0.2 / top-p 0.95 when it is 0)",
    )
    parser.add_argument("--batch", type=int, default=20, help="rows of the batched comparison")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs: launch every kernel")
    parser.add_argument(
        "--no-compile", action="store_true", help="CUDA graphs of the eager kernels, not compiled"
    )
    parser.add_argument(
        "--also-eager",
        action="store_true",
        help="on a GPU, also time eager steps beside the graphs",
    )
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="run q/k/v and w1/w3 as separate matmuls (by default, fixed-shape steps on a GPU run "
        "each group as one, from a fused copy of the weights where it fits)",
    )
    parser.add_argument(
        "--also-unfused",
        action="store_true",
        help="also time the same steps without fused projections (the fusion's measured effect)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="also write torch.profiler traces of plain decoding to PATH.<case>.trace.json.gz and "
        "PATH.<case>.txt: batch 1, and --batch sampled rows with the cache spanning the context",
    )
    parser.add_argument(
        "--profile-tokens", type=int, default=32, help="tokens decoded per profiled call"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from wmtp.errors import WmtpError

    args = parse_args(argv)
    try:
        result = run(args)
    except WmtpError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()


__all__ = ["benchmark", "main", "rig_agreeing_heads", "run"]
