"""pass@k of a model on benchmarks: generate, check in the sandbox, write and print the results.

For every benchmark of the ``[evaluation]`` section: the problems to score (the unseen ones, and
the seen ones when asked: ``wmtp.eval.splits``), n completions per problem
(``wmtp.eval.completions``), each judged on a worker pool (programs run in ``wmtp.sandbox``),
then ``<out>/<benchmark>/`` written (``wmtp.eval.results``) and a table printed
(``wmtp.eval.table``). ``check_completions`` and ``wmtp.eval.results.write_results`` take
completions from anywhere (a test's reference solutions, another tool's samples).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from wmtp.errors import RecipeError
from wmtp.eval.benchmarks import Benchmark, load_benchmark
from wmtp.eval.judges import Verdict
from wmtp.eval.splits import ScoredProblems, TrainingProblems, choose_problems

DECODING_KEYS = ("n_samples", "temperature", "top_p", "max_new_tokens", "speculative")
"""The ``[evaluation]`` keys that decide the samples (with the seed), recorded as ``decoding``."""


def check_completions(
    benchmark: Benchmark,
    completions: dict[str, list[str]],
    *,
    timeout_s: float,
    memory_mb: int,
    workers: int,
    progress: bool = True,
) -> dict[str, list[Verdict]]:
    """Judge every completion (task id -> its samples) on ``workers`` threads, in order.

    Each judge runs its programs in their own sandboxed processes, so threads keep the cores busy.
    """
    from rich.progress import Progress

    judges = {problem.task_id: problem.judge for problem in benchmark.problems}
    unknown = sorted(set(completions) - set(judges))
    assert not unknown, f"completions for problems not in {benchmark.name}: {unknown[:5]}"
    jobs = [(task, i, text) for task, texts in completions.items() for i, text in enumerate(texts)]
    verdicts: dict[str, list[Verdict | None]] = {t: [None] * len(c) for t, c in completions.items()}

    def judge(job: tuple[str, int, str]) -> tuple[str, int, Verdict]:
        task, index, text = job
        return task, index, judges[task].judge(text, timeout_s=timeout_s, memory_mb=memory_mb)

    with ThreadPoolExecutor(max_workers=workers) as pool, Progress(disable=not progress) as bar:
        bar_task = bar.add_task(f"{benchmark.name}: checking", total=len(jobs))
        for task, index, verdict in pool.map(judge, jobs):
            verdicts[task][index] = verdict
            bar.advance(bar_task)
    return verdicts  # type: ignore[return-value]


def check_settings(spec) -> None:
    """Reject ``[evaluation]`` settings that cannot work, naming the keys (before any loading)."""
    from wmtp.registry import get

    for entry in spec.benchmarks:
        get("evaluator", parse_benchmark(entry, {})[0])  # did-you-mean for unknown names
    if max(spec.k) > spec.n_samples:
        raise RecipeError(
            f"evaluation.k = {spec.k} needs evaluation.n_samples >= {max(spec.k)}, "
            f"got {spec.n_samples}"
        )


def evaluate(
    model,
    tokenizer,
    spec,
    out_dir: str | Path,
    *,
    seed: int,
    model_label: str,
    training: TrainingProblems,
    step: int | None = None,
    benchmark_paths: dict[str, str] | None = None,
    progress: bool = True,
    console=None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on every benchmark of ``spec`` (an ``EvaluationSpec``) into
    ``<out_dir>/<benchmark>/``; benchmark -> its summary. ``training`` says which problems are
    seen; ``step`` is the checkpoint's step (None: not a run's checkpoint).

    Benchmarks are named as in ``spec.benchmarks``: ``"humaneval"``, or ``"mbpp=PATH"`` for the
    ones read from a local file (``benchmark_paths`` may give the paths instead).
    """
    from wmtp.eval.table import print_table

    check_settings(spec)
    results = {}
    for entry in spec.benchmarks:
        name, path = parse_benchmark(entry, benchmark_paths or {})
        scored = choose_problems(
            load_benchmark(name, path),
            training,
            include_seen=spec.include_seen,
            max_problems=spec.max_problems,
        )
        context = {
            "model": model_label,
            "step": step,
            "training": training.as_dict(),
            "settings": {
                **spec.model_dump(mode="json"),
                "seed": seed,
                "source": path,
                **model_settings(model),
            },
        }
        results[name] = evaluate_benchmark(
            model, tokenizer, spec, scored, Path(out_dir) / name, seed, context, progress
        )
    print_table(results, console, title=f" · {model_label}")
    return results


def evaluate_benchmark(
    model, tokenizer, spec, scored: ScoredProblems, folder: Path, seed: int, context, progress
) -> dict[str, Any]:
    """Generate, check and write one benchmark's scored problems; its summary."""
    from wmtp import sandbox
    from wmtp.eval.completions import complete_benchmark
    from wmtp.eval.results import write_results

    benchmark = scored.benchmark
    if any(problem.judge.runs_code for problem in scored.problems):
        sandbox.require(purpose=f"checking {benchmark.name} completions")  # before decoding
    started = time.perf_counter()
    problems, gen_stats = complete_benchmark(
        model, tokenizer, benchmark, spec, seed=seed, problems=scored.problems, progress=progress
    )
    generated = time.perf_counter()
    completions = {p.task_id: [c.text for c in p.completions] for p in problems}
    verdicts = check_completions(
        benchmark,
        completions,
        timeout_s=spec.timeout_s,
        memory_mb=spec.memory_mb,
        workers=spec.workers,
        progress=progress,
    )
    checked = time.perf_counter()
    samples = {
        p.task_id: [
            {"completion": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.tokens)}
            for c in p.completions
        ]
        for p in problems
    }
    info = {
        "benchmark": benchmark.name,
        **context,
        "split": scored.as_dict(),
        "decoding": {**{key: getattr(spec, key) for key in DECODING_KEYS}, "seed": seed},
        "sandbox": sandbox.isolation_line(),
        "generation": gen_stats.as_dict(),
        "wall_s": {
            "generate": round(generated - started, 3),
            "check": round(checked - generated, 3),
            "total": round(checked - started, 3),
        },
    }
    groups = {name: [p.task_id for p in group] for name, group in scored.groups.items()}
    return write_results(folder, samples, verdicts, groups=groups, ks=spec.k, info=info)


def model_settings(model) -> dict[str, str]:
    """Where and how the model ran: device, dtype, attention backend."""
    param = next(model.parameters())
    return {
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "attention": model.attention.name,
    }


def parse_benchmark(entry: str, paths: dict[str, str]) -> tuple[str, str | None]:
    """``"mbpp=data/mbpp.jsonl"`` -> ("mbpp", "data/mbpp.jsonl"); ``"humaneval"`` -> (.., None)."""
    name, _, path = entry.partition("=")
    return name.strip(), (path.strip() or paths.get(name.strip()))


__all__ = ["check_completions", "check_settings", "evaluate", "evaluate_benchmark"]
