"""Completions of a benchmark's prompts by a model: n samples per problem.

Sampling (temperature > 0) decodes a problem's ``n_samples`` together, as one KV-cache batch of
the replicated prompt (in chunks of ``batch_size``), from a generator seeded by the recipe's seed
and the problem's task id, so a problem's samples do not depend on which problems ran with it.
Sampled self-speculatively, the samples are batched the same way, each row accepting its own
drafts. Greedy decoding (temperature 0) gives the same text every time: each problem is decoded
once (self-speculatively when asked) and that completion stands for all ``n_samples``.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from wmtp.eval.benchmarks import Benchmark, Problem
from wmtp.eval.generate import Completion, Sampling, StopRule, generate
from wmtp.eval.speculative import (
    SpeculativeStats,
    speculative_generate,
    speculative_generate_batch,
)


@dataclass
class GenerationStats:
    """Totals over a benchmark's generation."""

    completions: int = 0
    tokens: int = 0
    seconds: float = 0.0
    speculative: SpeculativeStats | None = None

    def as_dict(self) -> dict:
        out = {
            "completions": self.completions,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds > 0 else 0.0,
        }
        if self.speculative is not None:
            out["speculative"] = self.speculative.as_dict()
        return out


@dataclass
class ProblemCompletions:
    """The ``n`` completions of one problem (greedy: one completion, repeated)."""

    task_id: str
    completions: list[Completion] = field(default_factory=list)


def continuation_decoder(tokenizer, prompt_ids: list[int]) -> Callable[[list[int]], str]:
    """Text of generated ids as a continuation of the prompt.

    SentencePiece drops a leading space when it decodes ids on their own; decoding prompt and
    continuation together and cutting the prompt's text keeps the continuation's indentation.
    """
    prompt_text = tokenizer.decode(prompt_ids)

    def decode(ids: list[int]) -> str:
        text = tokenizer.decode(prompt_ids + ids)
        return text[len(prompt_text) :] if text.startswith(prompt_text) else tokenizer.decode(ids)

    return decode


def problem_seed(seed: int, task_id: str) -> int:
    """The sampling seed of one problem: the recipe's seed and the problem's task id."""
    return seed * 1_000_003 + zlib.crc32(task_id.encode("utf-8"))


def sample_problem(
    model: torch.nn.Module,
    prompt_ids: list[int],
    stop_rule: StopRule,
    *,
    n_samples: int,
    sampling: Sampling,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    speculative: bool,
) -> tuple[list[Completion], SpeculativeStats | None]:
    """``n_samples`` completions of one prompt (one, repeated, when greedy), sampled in batches
    of ``batch_size`` rows. Sampled speculatively, they follow plain sampling's distribution,
    with other draws."""
    if sampling.greedy:
        if speculative:
            completion, stats = speculative_generate(
                model, prompt_ids, stop_rule, max_new_tokens=max_new_tokens
            )
            return [completion] * n_samples, stats
        (completion,) = generate(model, [prompt_ids], stop_rule, max_new_tokens=max_new_tokens)
        return [completion] * n_samples, None
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if speculative:
        total, completions = SpeculativeStats(), []
        for start in range(0, n_samples, batch_size):
            rows = min(batch_size, n_samples - start)
            batch, rows_stats = speculative_generate_batch(
                model, [prompt_ids] * rows, stop_rule, max_new_tokens=max_new_tokens,
                sampling=sampling, generator=generator,
            )  # fmt: skip
            completions += batch
            total.add(SpeculativeStats.of_batch(rows_stats))
        return completions, total
    completions = generate(
        model,
        [prompt_ids] * n_samples,
        stop_rule,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        generator=generator,
        batch_size=batch_size,
    )
    return completions, None


def complete_benchmark(
    model: torch.nn.Module,
    tokenizer,
    benchmark: Benchmark,
    spec,
    *,
    seed: int,
    problems: tuple[Problem, ...] | None = None,
    progress: bool = True,
    bar=None,
    on_problem: Callable[[ProblemCompletions], None] | None = None,
) -> tuple[list[ProblemCompletions], GenerationStats]:
    """Completions of ``problems`` (every problem of ``benchmark`` when None) under the
    ``[evaluation]`` section ``spec``; ``on_problem`` gets each problem's as soon as they exist
    (the evaluator checks them meanwhile). ``bar``: a rich ``Progress`` to show progress in
    (else one of its own, unless ``progress`` is false)."""
    from rich.progress import Progress

    problems = benchmark.problems if problems is None else problems

    sampling = Sampling(temperature=spec.temperature, top_p=spec.top_p)
    stats = GenerationStats(speculative=SpeculativeStats() if spec.speculative else None)
    results = []
    started = time.perf_counter()
    with contextlib.nullcontext(bar) if bar is not None else Progress(disable=not progress) as bar:
        generating = f"{benchmark.name}: generating"
        first = generating
        if next(model.parameters()).device.type == "cuda":  # compiled, graphed decoding steps
            first += " (the first batches compile and capture the decoding steps)"
        task = bar.add_task(first, total=len(problems))
        for done, problem in enumerate(problems):
            if done == 1:
                bar.update(task, description=generating)
            prompt_ids = tokenizer.encode(problem.prompt, bos=True)
            stop_rule = StopRule(
                continuation_decoder(tokenizer, prompt_ids),
                stop=benchmark.stop,
                eos_id=tokenizer.eos_id,
            )
            completions, spec_stats = sample_problem(
                model,
                prompt_ids,
                stop_rule,
                n_samples=spec.n_samples,
                sampling=sampling,
                max_new_tokens=spec.max_new_tokens,
                batch_size=spec.batch_size,
                seed=problem_seed(seed, problem.task_id),
                speculative=spec.speculative,
            )
            distinct = completions[:1] if sampling.greedy else completions
            stats.completions += len(distinct)
            stats.tokens += sum(len(c.tokens) for c in distinct)
            if spec_stats is not None and stats.speculative is not None:
                stats.speculative.add(spec_stats)
            results.append(ProblemCompletions(problem.task_id, completions))
            if on_problem is not None:
                on_problem(results[-1])
            bar.advance(task)
    stats.seconds = time.perf_counter() - started
    return results, stats


__all__ = ["GenerationStats", "ProblemCompletions", "complete_benchmark", "continuation_decoder"]
