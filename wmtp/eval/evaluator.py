"""pass@k of a model on benchmarks: generate, check in the sandbox, write and print the results.

For every benchmark of the ``[evaluation]`` section: n completions per problem
(``wmtp.eval.completions``), each judged on a worker pool (programs run in
``wmtp.sandbox``), then

- ``<out>/<benchmark>.jsonl``: every sample with its completion, status and why it failed;
- ``<out>/summary.json``: per benchmark, pass@k for each k, status counts, generation speed and
  the settings used (benchmarks evaluated earlier into the same folder are kept);

and a table on the console. ``check_completions`` and ``write_results`` take completions from
anywhere (a test's reference solutions, another tool's samples).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import RecipeError
from wmtp.eval.benchmarks import Benchmark, load_benchmark
from wmtp.eval.judges import Verdict
from wmtp.eval.passk import pass_at_k


@dataclass(frozen=True)
class SampleResult:
    """One line of ``<benchmark>.jsonl``."""

    task_id: str
    sample: int
    completion: str
    status: str
    detail: str
    finish_reason: str = ""
    n_tokens: int = 0
    duration_s: float = 0.0


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


def pass_at_ks(verdicts: dict[str, list[Verdict]], ks: list[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems, for each k (as ``{"1": ..., "10": ...}``)."""
    counts = [(len(vs), sum(v.passed for v in vs)) for vs in verdicts.values()]
    return {
        str(k): sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in sorted(set(ks))
    }


def check_settings(spec) -> None:
    """Reject ``[evaluation]`` settings that cannot work, naming the keys (before any loading)."""
    from wmtp.registry import get

    for entry in spec.benchmarks:
        get("evaluator", parse_benchmark(entry, {})[0])  # did-you-mean for unknown names
    if spec.speculative and spec.temperature > 0:
        raise RecipeError(
            f"evaluation.speculative = true decodes greedily, but evaluation.temperature = "
            f"{spec.temperature}; set the temperature to 0 or speculative to false"
        )
    if max(spec.k) > spec.n_samples:
        raise RecipeError(
            f"evaluation.k = {spec.k} needs evaluation.n_samples >= {max(spec.k)}, "
            f"got {spec.n_samples}"
        )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write through a temporary name, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_summary(out_dir: Path, name: str, entry: dict[str, Any], model: str) -> dict:
    """Add (or replace) benchmark ``name`` in ``summary.json``; other benchmarks are kept."""
    path = out_dir / "summary.json"
    summary: dict[str, Any] = {"benchmarks": {}}
    if path.is_file():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # never lose it: keep the unreadable file aside
            path.replace(path.with_suffix(".json.unreadable"))
            summary = {"benchmarks": {}}
    summary.setdefault("benchmarks", {})[name] = entry
    summary["model"] = model
    summary["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_name(f".summary.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return summary


def write_results(
    out_dir: Path,
    benchmark: Benchmark,
    samples: dict[str, list[dict]],
    verdicts: dict[str, list[Verdict]],
    *,
    ks: list[int],
    settings: dict[str, Any],
    model: str,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<benchmark>.jsonl`` and update ``summary.json``; the benchmark's summary entry.

    ``samples[task][i]`` holds the sample's ``completion`` (and optionally ``finish_reason``,
    ``n_tokens``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, task_samples in samples.items():
        for index, (sample, verdict) in enumerate(zip(task_samples, verdicts[task], strict=True)):
            result = SampleResult(
                task_id=task,
                sample=index,
                completion=sample["completion"],
                status=verdict.status,
                detail=verdict.detail,
                finish_reason=sample.get("finish_reason", ""),
                n_tokens=sample.get("n_tokens", 0),
                duration_s=round(verdict.duration_s, 4),
            )
            rows.append(asdict(result))
    write_jsonl(out_dir / f"{benchmark.name}.jsonl", rows)
    entry = {
        "pass_at_k": pass_at_ks(verdicts, ks),
        "problems": len(verdicts),
        "samples_per_problem": min(len(v) for v in verdicts.values()),
        "statuses": dict(Counter(row["status"] for row in rows)),
        "settings": settings,
    }
    if generation is not None:
        entry["generation"] = generation
    write_summary(out_dir, benchmark.name, entry, model)
    return entry


def print_table(results: dict[str, dict[str, Any]], console=None) -> None:
    """Benchmarks as rows: problems, samples, pass@k (%), status counts."""
    from rich.console import Console
    from rich.table import Table

    ks = sorted({k for entry in results.values() for k in entry["pass_at_k"]}, key=int)
    table = Table(title="pass@k")
    for column in ["benchmark", "problems", "n", *(f"pass@{k}" for k in ks), "statuses"]:
        table.add_column(column, justify="left" if column in ("benchmark", "statuses") else "right")
    for name, entry in results.items():
        scores = [
            f"{100 * entry['pass_at_k'][k]:.2f}" if k in entry["pass_at_k"] else "–" for k in ks
        ]
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(entry["statuses"].items()))
        table.add_row(
            name, str(entry["problems"]), str(entry["samples_per_problem"]), *scores, statuses
        )
    (console or Console()).print(table)


def evaluate(
    model,
    tokenizer,
    spec,
    out_dir: str | Path,
    *,
    seed: int,
    model_label: str,
    benchmark_paths: dict[str, str] | None = None,
    progress: bool = True,
    console=None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on every benchmark of ``spec`` (an ``EvaluationSpec``); write the files.

    Benchmarks are named as in ``spec.benchmarks``: ``"humaneval"``, or ``"mbpp=PATH"`` for the
    ones read from a local file (``benchmark_paths`` may give the paths instead).
    """
    from wmtp.eval.completions import complete_benchmark

    check_settings(spec)
    out = Path(out_dir)
    results = {}
    for entry in spec.benchmarks:
        name, path = parse_benchmark(entry, benchmark_paths or {})
        benchmark = load_benchmark(name, path).limited(spec.max_problems)
        if any(problem.judge.runs_code for problem in benchmark.problems):
            from wmtp import sandbox

            sandbox.require(purpose=f"checking {name} completions")  # before minutes of decoding
        problems, gen_stats = complete_benchmark(
            model, tokenizer, benchmark, spec, seed=seed, progress=progress
        )
        completions = {p.task_id: [c.text for c in p.completions] for p in problems}
        verdicts = check_completions(
            benchmark,
            completions,
            timeout_s=spec.timeout_s,
            memory_mb=spec.memory_mb,
            workers=spec.workers,
            progress=progress,
        )
        samples = {
            p.task_id: [
                {"completion": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.tokens)}
                for c in p.completions
            ]
            for p in problems
        }
        param = next(model.parameters())
        settings = {
            **spec.model_dump(mode="json"),
            "seed": seed,
            "source": path,
            "device": str(param.device),
            "dtype": str(param.dtype).removeprefix("torch."),
            "attention": model.attention.name,
        }
        results[benchmark.name] = write_results(
            out,
            benchmark,
            samples,
            verdicts,
            ks=spec.k,
            settings=settings,
            model=model_label,
            generation=gen_stats.as_dict(),
        )
    print_table(results, console)
    return results


def parse_benchmark(entry: str, paths: dict[str, str]) -> tuple[str, str | None]:
    """``"mbpp=data/mbpp.jsonl"`` -> ("mbpp", "data/mbpp.jsonl"); ``"humaneval"`` -> (.., None)."""
    name, _, path = entry.partition("=")
    return name.strip(), (path.strip() or paths.get(name.strip()))


__all__ = [
    "SampleResult",
    "check_completions",
    "evaluate",
    "pass_at_ks",
    "print_table",
    "write_results",
]
