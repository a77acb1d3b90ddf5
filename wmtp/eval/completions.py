"""Completions of a benchmark's prompts by a model: n samples per problem.

Plain decoding puts every problem's rows (``n_samples`` each when sampling) through one
continuously batched decoder of ``batch_size`` slots (``wmtp.eval.generate.decode_rows``): a row
that ends hands its slot to the next at once, whatever its problem or prompt length. Each sample
draws from its own stream, seeded by the recipe's seed, the problem's task id and the sample's
index, so a problem's samples do not depend on which problems ran with it or on the batch size.
Self-speculative decoding batches one problem's samples at a time (in chunks of
``batch_size``), each row accepting its own drafts, drawn from a generator seeded by the
problem. Greedy decoding (temperature 0) gives the same text every time: each problem is decoded
once and that completion stands for all ``n_samples``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from wmtp.eval.benchmarks import Benchmark, Problem
from wmtp.eval.generate import Completion, Row, Sampling, StepTally, StopRule, decode_rows
from wmtp.eval.prompting import PromptFormat
from wmtp.eval.speculative import (
    SpeculativeStats,
    speculative_generate,
    speculative_generate_batch,
)

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    """Totals over a benchmark's generation."""

    completions: int = 0
    tokens: int = 0
    seconds: float = 0.0
    setup_s: float = 0.0
    """Of ``seconds``, compiling and capturing decoding steps (the first steps of a shape)."""
    speculative: SpeculativeStats | None = None
    steps: StepTally | None = None
    """Plain decoding's steps: how full, who set the pace."""
    rank_seconds: tuple[float, ...] = ()
    """Each rank's ``seconds``, when several generated (:meth:`merged`)."""

    @classmethod
    def merged(cls, parts: list[GenerationStats]) -> GenerationStats:
        """The ranks' statistics as one evaluation's: counts and tallies summed, ``seconds`` and
        ``setup_s`` the slowest rank's (the ranks run at once), so ``tokens_per_s`` is all the
        ranks' throughput together."""
        if len(parts) == 1:
            return parts[0]
        out = cls(
            completions=sum(p.completions for p in parts),
            tokens=sum(p.tokens for p in parts),
            seconds=max(p.seconds for p in parts),
            setup_s=max(p.setup_s for p in parts),
            rank_seconds=tuple(p.seconds for p in parts),
        )
        for part in parts:
            if part.speculative is not None:
                out.speculative = out.speculative or SpeculativeStats()
                out.speculative.add(part.speculative)
            if part.steps is not None:
                out.steps = out.steps or StepTally()
                out.steps.add(part.steps)
        return out

    def as_dict(self) -> dict:
        out = {
            "completions": self.completions,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds > 0 else 0.0,
            "setup_s": round(self.setup_s, 3),
        }
        if self.rank_seconds:
            out["ranks"] = len(self.rank_seconds)
            out["seconds_by_rank"] = [round(s, 3) for s in self.rank_seconds]
        if self.steps is not None:
            out["steps"] = self.steps.as_dict()
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


def sample_seed(seed: int, task_id: str, sample: int) -> int:
    """The random stream of one sample of one problem: the recipe's seed, the problem's task id
    and the sample's index, and nothing else."""
    return (problem_seed(seed, task_id) * 1_000_003 + sample) % 2**63


@dataclass
class _Problem:
    """A problem's prompt, how its completions end, and the rows decoding it."""

    problem: Problem
    prompt_ids: list[int]
    stop_rule: StopRule
    rows: int
    completions: dict[int, Completion] = field(default_factory=dict)


def _prepared(
    tokenizer, benchmark: Benchmark, problems, spec, sampling, shown: PromptFormat
) -> list[_Problem]:
    out = []
    for problem in problems:
        prompt_ids = tokenizer.encode(shown.text(problem.prompt), bos=True)
        decode = continuation_decoder(tokenizer, prompt_ids)
        stop_rule = StopRule(
            decode, stop=benchmark.stop, eos_id=tokenizer.eos_id, peek=tokenizer.decode
        )
        rows = 1 if sampling.greedy else spec.n_samples
        out.append(_Problem(problem, prompt_ids, stop_rule, rows))
    return out


def _warn_of_full_contexts(prepared: list[_Problem], context: int, name: str) -> None:
    """Say which prompts leave no room for a completion in the model's context (they get empty
    ones, scored as failed), rather than let them fail unexplained."""
    full = [item.problem.task_id for item in prepared if len(item.prompt_ids) >= context]
    if full:
        log.warning(
            "%s: %d of %d prompts fill the model's context of %d tokens (max_seq_len) and get "
            "empty completions: %s", name, len(full), len(prepared), context, ", ".join(full[:5])
            + (", ..." if len(full) > 5 else ""),
        )  # fmt: skip


def _continuous(
    model, prepared: list[_Problem], spec, sampling, seed: int, finished, tally: StepTally
) -> None:
    """Every problem's rows through one continuously batched decoder (``decode_rows``):
    ``finished(p)`` hears of problem ``p`` once its last row has ended."""
    context = model.args.max_seq_len
    rows, owners = [], []
    for p, item in enumerate(prepared):
        limit = max(0, min(spec.max_new_tokens, context - len(item.prompt_ids)))
        for j in range(item.rows):
            sample = sample_seed(seed, item.problem.task_id, j)
            rows.append(Row(item.prompt_ids, item.stop_rule, limit, sample))
            owners.append((p, j))

    def on_done(i: int, completion: Completion) -> None:
        p, j = owners[i]
        prepared[p].completions[j] = completion
        if len(prepared[p].completions) == prepared[p].rows:
            finished(p)

    if not rows:  # a rank whose share is empty
        return
    slots = min(spec.batch_size, len(rows))
    decode_rows(model, rows, slots=slots, sampling=sampling, on_done=on_done, tally=tally)


def speculative_samples(
    model: torch.nn.Module,
    prompt_ids: list[int],
    stop_rule: StopRule,
    *,
    n_samples: int,
    sampling: Sampling,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> tuple[list[Completion], SpeculativeStats]:
    """One problem's ``n_samples`` completions decoded self-speculatively (greedy: one,
    repeated), sampled in batches of ``batch_size`` rows from a generator seeded by ``seed``.
    They follow plain sampling's distribution, with other draws."""
    if sampling.greedy:
        completion, stats = speculative_generate(
            model, prompt_ids, stop_rule, max_new_tokens=max_new_tokens
        )
        return [completion] * n_samples, stats
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    total, completions = SpeculativeStats(), []
    for start in range(0, n_samples, batch_size):
        batch, rows_stats = speculative_generate_batch(
            model, [prompt_ids] * min(batch_size, n_samples - start), stop_rule,
            max_new_tokens=max_new_tokens, sampling=sampling, generator=generator,
        )  # fmt: skip
        completions += batch
        total.add(SpeculativeStats.of_batch(rows_stats))
    return completions, total


def _speculative(model, item: _Problem, spec, sampling, seed: int) -> SpeculativeStats:
    """One problem's rows through ``speculative_samples``."""
    completions, stats = speculative_samples(
        model, item.prompt_ids, item.stop_rule, n_samples=item.rows, sampling=sampling,
        max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
        seed=problem_seed(seed, item.problem.task_id),
    )  # fmt: skip
    item.completions.update(enumerate(completions))
    return stats


def complete_benchmark(
    model: torch.nn.Module,
    tokenizer,
    benchmark: Benchmark,
    spec,
    *,
    seed: int,
    shown: PromptFormat,
    problems: tuple[Problem, ...] | None = None,
    progress: bool = True,
    bar=None,
    on_problem: Callable[[ProblemCompletions], None] | None = None,
) -> tuple[list[ProblemCompletions], GenerationStats]:
    """Completions of ``problems`` (every problem of ``benchmark`` when None), each prompt shown
    as ``shown`` lays it out, under the ``[evaluation]`` section ``spec``; ``on_problem`` gets
    each problem's as soon as they exist (the evaluator checks them meanwhile). ``bar``: a rich ``Progress`` to show progress in
    (else one of its own, unless ``progress`` is false)."""
    from wmtp.models.kv_cache import setup_figures
    from wmtp.progress import Bar

    problems = benchmark.problems if problems is None else problems
    sampling = Sampling(temperature=spec.temperature, top_p=spec.top_p)
    stats = GenerationStats(speculative=SpeculativeStats() if spec.speculative else None)
    prepared = _prepared(tokenizer, benchmark, problems, spec, sampling, shown)
    _warn_of_full_contexts(prepared, model.args.max_seq_len, benchmark.name)
    setup_before = setup_figures(model)["setup_s"]
    started = time.perf_counter()
    with contextlib.nullcontext(bar) if bar is not None else Bar(disable=not progress) as bar:
        generating = f"{benchmark.name}: generating"
        first = generating
        if next(model.parameters()).device.type == "cuda":  # compiled, graphed decoding steps
            first += " (the first steps compile and capture the decoding steps)"
        task = bar.add_task(first, total=len(problems))

        def finished(p: int) -> None:
            item = prepared[p]
            distinct = [item.completions[j] for j in range(item.rows)]
            stats.completions += len(distinct)
            stats.tokens += sum(len(c.tokens) for c in distinct)
            if on_problem is not None:
                repeated = distinct * (spec.n_samples // item.rows)  # greedy: one, n times
                on_problem(ProblemCompletions(item.problem.task_id, repeated))
            bar.update(task, advance=1, description=generating)

        if spec.speculative:
            for p, item in enumerate(prepared):
                stats.speculative.add(_speculative(model, item, spec, sampling, seed))
                finished(p)
        else:
            stats.steps = StepTally()
            _continuous(model, prepared, spec, sampling, seed, finished, stats.steps)
    stats.seconds = time.perf_counter() - started
    stats.setup_s = setup_figures(model)["setup_s"] - setup_before
    results = [
        ProblemCompletions(
            item.problem.task_id,
            [item.completions[j] for j in range(item.rows)] * (spec.n_samples // item.rows),
        )
        for item in prepared
    ]
    return results, stats


__all__ = [
    "GenerationStats",
    "ProblemCompletions",
    "complete_benchmark",
    "continuation_decoder",
    "sample_seed",
    "speculative_samples",
]
