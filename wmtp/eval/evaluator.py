"""pass@k of a model on benchmarks: generate, check in the sandbox, write and print the results.

For every benchmark of the ``[evaluation]`` section: the problems to score (the unseen ones, and
the seen ones when asked: ``wmtp.eval.splits``), n completions per problem
(``wmtp.eval.completions``), each problem's judged on a worker pool (programs run in
``wmtp.sandbox``) while the next problems generate, then ``<out>/<benchmark>/`` written
(``wmtp.eval.results``) and a table printed (``wmtp.eval.table``). Under torchrun each rank
generates and checks its share of the problems and rank 0 writes (``wmtp.eval.ranks``),
holding ``<out>/.eval.lock`` meanwhile: a second evaluation into the same folder is refused
(``wmtp.locks``) instead of writing the same files.
``check_completions`` and ``wmtp.eval.results.write_results`` take
completions from anywhere (a test's reference solutions, another tool's samples).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import Interrupted, RunError, StopSignal
from wmtp.eval.benchmarks import Benchmark, Loaded
from wmtp.eval.judges import Verdict
from wmtp.eval.partial import PartialResults
from wmtp.eval.prompting import PromptFormat, prompt_format
from wmtp.eval.ranks import EvalRanks
from wmtp.eval.splits import ScoredProblems, TrainingProblems, choose_problems
from wmtp.stopping import signals_deferred, signals_raise

log = logging.getLogger(__name__)

LOCK_FILE = ".eval.lock"
"""In an evaluation's results folder while rank 0 writes it."""

DECODING_KEYS = ("n_samples", "temperature", "top_p", "max_new_tokens", "speculative")
"""The ``[evaluation]`` keys that decide the samples (with the seed), recorded as ``decoding``."""


def decoding(spec, seed: int) -> dict[str, Any]:
    """The settings that decide the samples: the summary's ``decoding``, part of a partial key."""
    return {**{key: getattr(spec, key) for key in DECODING_KEYS}, "seed": seed}


class Checker:
    """Judges completions on ``workers`` threads as they arrive: ``submit`` a problem's samples
    as soon as they exist (generation goes on in the caller's thread, on the GPU, while the
    sandboxed programs run on the CPUs), ``verdicts`` waits for the rest. Each judge runs its
    programs in their own sandboxed processes, so threads keep the cores busy. A context
    manager: leaving it cancels what has not started. ``bar`` shows the checks done of
    ``total``, the completions to check when known ahead (else of those submitted so far): an
    evaluation stopped part way leaves it where it stood, not at 100% of what had arrived."""

    def __init__(self, benchmark: Benchmark, *, timeout_s: float, memory_mb: int, workers: int,
                 bar=None, on_checked=None, total: int = 0):  # fmt: skip
        self.on_checked = on_checked
        """``on_checked(task_id, verdicts)``: a problem's verdicts, once all are in (a thread's)."""
        self.name = benchmark.name
        self.judges = {problem.task_id: problem.judge for problem in benchmark.problems}
        self.limits = {"timeout_s": timeout_s, "memory_mb": memory_mb}
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures: dict[str, list[Future]] = {}
        self.submitted = 0
        self.total = total
        self.bar = bar
        self.bar_task = None if bar is None else bar.add_task(f"{self.name}: checking", total=total)

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)

    def submit(self, task_id: str, texts: list[str]) -> None:
        """Check a problem's completions, each distinct text once (greedy decoding's one text
        stands for all its samples; sampling repeats short ones): its copies share its verdict,
        so a program near its timeout cannot pass in some copies and fail in others."""
        assert task_id in self.judges, f"completions for a problem not in {self.name}: {task_id}"
        judge = self.judges[task_id].judge
        checks: dict[str, Future] = {}
        for text in texts:
            if text not in checks:
                checks[text] = self.pool.submit(judge, text, **self.limits)
        futures = [checks[text] for text in texts]
        self.futures.setdefault(task_id, []).extend(futures)
        self.submitted += len(futures)
        if self.bar is not None:
            self.bar.update(self.bar_task, total=max(self.total, self.submitted))
            for future in futures:
                future.add_done_callback(self._checked)
        if self.on_checked is not None:
            self._when_all_done(task_id, futures)

    def _checked(self, future: Future) -> None:
        """One check has ended: the bar moves on, unless it was cancelled before it started."""
        if not future.cancelled():
            self.bar.advance(self.bar_task)

    def _when_all_done(self, task_id: str, futures: list[Future]) -> None:
        left, lock = [len(futures)], threading.Lock()

        def one_done(_: Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            if all(not f.cancelled() and f.exception() is None for f in futures):
                self.on_checked(task_id, [f.result() for f in futures])

        for future in futures:
            future.add_done_callback(one_done)

    def verdicts(self) -> dict[str, list[Verdict]]:
        """Every submitted problem's verdicts, in the order of its samples."""
        return {task: [f.result() for f in futures] for task, futures in self.futures.items()}


def check_completions(
    benchmark: Benchmark,
    completions: dict[str, list[str]],
    *,
    timeout_s: float,
    memory_mb: int,
    workers: int,
    progress: bool = True,
) -> dict[str, list[Verdict]]:
    """Judge every completion (task id -> its samples) on ``workers`` threads, in order."""
    from wmtp.progress import Bar

    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "workers": workers}
    total = sum(len(texts) for texts in completions.values())
    with (
        Bar(disable=not progress) as bar,
        Checker(benchmark, **limits, bar=bar, total=total) as checker,
    ):
        for task, texts in completions.items():
            checker.submit(task, texts)
        return checker.verdicts()


def evaluate(
    model,
    tokenizer,
    spec,
    out_dir: str | Path,
    *,
    seed: int,
    model_label: str,
    training: TrainingProblems,
    benchmarks: list[Loaded],
    step: int | None = None,
    progress: bool = True,
    console=None,
    ranks: EvalRanks = EvalRanks(),
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on every benchmark of ``spec`` (an ``EvaluationSpec``) into
    ``<out_dir>/<benchmark>/``; benchmark -> its summary. ``training`` says which problems are
    seen; ``step`` is the checkpoint's step (None: unknown, neither a run's checkpoint nor an
    export of one). With several ``ranks`` each evaluates its share and rank 0 writes, prints
    and returns the results (the others return an empty dict).

    ``benchmarks`` are ``spec.benchmarks`` read (``wmtp.eval.benchmarks.load_benchmarks``),
    every one before the first generates.
    """
    from wmtp.eval.table import print_table
    from wmtp.recipe.load import display_path

    shown = prompt_format(spec, training.template)
    results = {}
    with writing_results(Path(out_dir)) if ranks.is_main else contextlib.nullcontext():
        for entry in benchmarks:
            name, path = entry.benchmark.name, entry.path
            scored = choose_problems(
                entry.benchmark,
                training,
                include_seen=spec.include_seen,
                max_problems=spec.max_problems,
            )
            context = {
                "prompts": shown.as_dict(),
                "model": model_label,
                "step": step,
                "training": training.as_dict(),
                "settings": {
                    **spec.model_dump(mode="json"),
                    "seed": seed,
                    "source": path,
                    "source_sha256": entry.digest,  # what tells sources apart (wmtp report)
                    **model_settings(model),
                },
            }
            results[name] = evaluate_benchmark(
                model, tokenizer, spec, scored, shown, Path(out_dir) / name, seed, context,
                progress, ranks,
            )  # fmt: skip
    if not ranks.is_main:
        return {}
    print_table(results, console, model=display_path(model_label))
    return results


@contextlib.contextmanager
def writing_results(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s evaluation lock while rank 0 writes it; the folders made for the lock
    are removed again where the evaluation wrote nothing in them (it stopped before decoding)."""
    from wmtp.locks import holding

    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with holding(out_dir / LOCK_FILE, _being_evaluated(out_dir)):
            yield
    finally:
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # results in it
                break


def check_not_evaluating(out_dir: Path) -> None:
    """A RunError when another evaluation writes ``out_dir`` now (:func:`writing_results`)."""
    from wmtp.locks import check_free

    check_free(Path(out_dir) / LOCK_FILE, _being_evaluated(out_dir))


def _being_evaluated(out_dir: Path):
    def refused(holder: str) -> RunError:
        return RunError(
            f"cannot evaluate into {out_dir}: another evaluation writes its results there now "
            f"({holder}); wait until it ends, or give another --out"
        )

    return refused


def evaluate_benchmark(
    model,
    tokenizer,
    spec,
    scored: ScoredProblems,
    shown: PromptFormat,
    folder: Path,
    seed: int,
    context,
    progress,
    ranks: EvalRanks = EvalRanks(),
) -> dict[str, Any]:
    """Generate and check this rank's share of one benchmark's scored problems, shown to the
    model as ``shown`` says, less those an interrupted run of the same evaluation finished
    (``wmtp.eval.partial``); on rank 0, gather every share, write the results and return their
    summary (the other ranks return an empty dict)."""
    from wmtp import sandbox

    benchmark = scored.benchmark
    if any(problem.judge.runs_code for problem in scored.problems):
        sandbox.require(purpose=f"checking {benchmark.name} completions")  # before decoding
    workers = check_workers(spec, ranks.local_world_size)
    partial = PartialResults.of(folder, _partial_key(spec, seed, context, benchmark), ranks.rank)
    before = partial.finished()
    mine = ranks.share(scored.problems)
    todo = tuple(p for p in mine if p.task_id not in before)
    resumed = sum(p.task_id in before for p in scored.problems)
    notes = _notes(benchmark.name, len(scored.problems), resumed, len(todo), partial, ranks)
    with signals_raise(StopSignal):  # said with what is kept, not where Python stood
        try:
            share = _share(
                model, tokenizer, spec, benchmark, todo, shown, seed, workers, progress, notes,
                partial,
            )  # fmt: skip
        except StopSignal as stop:
            share = _Stopped(stop.signum)
        else:
            share.take_up(before, mine)
        shares, late = _hand_over(share, partial, ranks)
    signum = _stop_signal(share, shares, late)
    if signum is not None:
        raise _stopped(signum, benchmark.name, partial, len(scored.problems)) from None
    if shares is None:
        return {}
    with signals_deferred():  # the results whole and the partial copy gone, or neither
        summary = _write(spec, scored, folder, seed, context, workers, shares, resumed)
        partial.remove()
    return summary


@dataclass(frozen=True)
class _Stopped:
    """What a rank that a stop signal ended hands over in place of its share."""

    signum: int


def _hand_over(
    share: _Share | _Stopped, partial: PartialResults, ranks: EvalRanks
) -> tuple[list | None, int | None]:
    """Every rank's share (or :class:`_Stopped`) on rank 0, and a stop signal that came during the
    hand-over (None: none). Each rank closes its partial results first, so once rank 0 holds the
    shares no rank writes any more: a stop counts every rank's last problem. A signal meanwhile
    waits until the hand-over is done: no rank leaves the collective half way."""
    shares, late = None, None
    try:
        with signals_deferred():
            partial.close()
            shares = ranks.gather(share)
    except StopSignal as stop:  # raised again as the deferral ends
        late = stop.signum
    return shares, late


def _stop_signal(share: _Share | _Stopped, shares: list | None, late: int | None) -> int | None:
    """The signal that stops this benchmark: this rank's, another rank's (known on rank 0),
    or one during the hand-over; None where nothing stopped."""
    handed = [share] if shares is None else shares
    signals = [s.signum for s in handed if isinstance(s, _Stopped)]
    return next(iter(signals), late)


def _stopped(signum: int, name: str, partial: PartialResults, total: int) -> Interrupted:
    """A stop signal during an evaluation, said with the problems it kept for the same command
    to take up: counted from every rank's file once every rank has closed it
    (:func:`_hand_over`), so the count is what a run again finds."""
    import signal

    done = len(partial.finished())
    kept = (
        f"{done} of {total} problems finished are kept in {partial.folder}, and the same "
        "command goes on from them"
        if done
        else "no problem had finished"
    )
    return Interrupted(f"{signal.Signals(signum).name} during {name}: {kept}", signum)


def _partial_key(spec, seed: int, context: dict, benchmark: Benchmark) -> dict:
    """What decides a problem's samples and verdicts: whose partial results can be taken up."""
    settings = context["settings"]
    return {
        "benchmark": benchmark.name,
        "source": settings.get("source_sha256") or settings.get("source"),  # content, not name
        "model": context["model"],
        "prompts": context["prompts"],
        "decoding": decoding(spec, seed),
        "limits": {"timeout_s": spec.timeout_s, "memory_mb": spec.memory_mb},
    }


def _notes(name: str, scored: int, resumed: int, todo: int, partial, ranks) -> list[str]:
    """What rank 0 says: problems an interrupted run finished (a warning, so that it is said
    with or without progress bars), those an interrupted run of other settings left beside them
    (kept for it), and the ranks' shares (above the bars)."""
    if resumed and ranks.is_main:
        log.warning(
            "%s: %d of %d problems finished by an interrupted run of this evaluation (kept in "
            "%s); decoding the other %d", name, resumed, scored, partial.folder, scored - resumed,
        )  # fmt: skip
    for other, finished in partial.others().items() if ranks.is_main else ():
        log.warning(
            "%s: %d problems finished by an interrupted evaluation with other settings (or "
            "another content of the benchmark file) are kept in %s, not taken up here: this "
            "one starts afresh; the command that stopped goes on from them", name, finished, other,
        )  # fmt: skip
    if ranks.world_size == 1:
        return []
    return [
        f"{name}: {scored - resumed} problems to decode over {ranks.world_size} ranks; "
        f"the bars follow this rank's {todo}"
    ]


def _write(spec, scored, folder, seed, context, workers, shares, resumed) -> dict[str, Any]:
    """The gathered shares as ``folder``'s results, in the scored problems' order."""
    from wmtp import sandbox
    from wmtp.eval.completions import GenerationStats
    from wmtp.eval.results import write_results

    order = [p.task_id for p in scored.problems]
    samples = {task: s for share in shares for task, s in share.samples.items()}
    verdicts = {task: v for share in shares for task, v in share.verdicts.items()}
    generated = max(share.generate_s for share in shares)  # the ranks run at once
    total = max(share.total_s for share in shares)
    info = {
        "benchmark": scored.benchmark.name,
        **context,
        "split": scored.as_dict(),
        "decoding": decoding(spec, seed),
        "sandbox": sandbox.isolation_line(),
        "check_workers": workers,
        "generation": GenerationStats.merged([share.stats for share in shares]).as_dict(),
        "resumed_problems": resumed,
        "wall_s": {  # checks run while generation goes on: "check" is what they add after it
            "generate": round(generated, 3),
            "check": round(total - generated, 3),
            "total": round(total, 3),
            "judging_summed": round(sum(v.duration_s for vs in verdicts.values() for v in vs), 3),
        },
    }
    groups = {name: [p.task_id for p in group] for name, group in scored.groups.items()}
    return write_results(
        folder,
        {task: samples[task] for task in order},
        {task: verdicts[task] for task in order},
        groups=groups,
        ks=spec.k,
        info=info,
    )


@dataclass
class _Share:
    """One rank's part of a benchmark: its problems' samples and verdicts, how generation went,
    and its wall times (generation; generation and the checks after it)."""

    samples: dict[str, list[dict]]
    verdicts: dict[str, list[Verdict]]
    stats: Any
    generate_s: float
    total_s: float

    def take_up(self, finished: dict, problems) -> None:
        """Add the ``problems`` (this rank's) that an interrupted run ``finished``."""
        for problem in problems:
            if problem.task_id in finished:
                task = problem.task_id
                self.samples[task], self.verdicts[task] = finished[task]


def _share(
    model, tokenizer, spec, benchmark, problems, shown, seed, workers, progress, notes, partial
) -> _Share:
    """Generate the completions of ``problems`` (of ``benchmark``) and check each problem's in
    the sandbox as soon as they exist, on ``workers`` threads, recording each finished problem
    in ``partial``; ``notes`` are printed above the progress bars."""
    from wmtp.eval.completions import complete_benchmark
    from wmtp.progress import Bar

    started = time.perf_counter()
    samples: dict[str, list[dict]] = {}

    def submit(problem) -> None:  # its samples kept, then checked
        samples[problem.task_id] = [
            {"completion": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.tokens)}
            for c in problem.completions
        ]
        checker.submit(problem.task_id, [c.text for c in problem.completions])

    def checked(task_id: str, verdicts: list[Verdict]) -> None:
        partial.record(task_id, samples[task_id], verdicts)

    limits = {"timeout_s": spec.timeout_s, "memory_mb": spec.memory_mb, "workers": workers}
    total = len(problems) * spec.n_samples  # every problem's samples, greedy ones too
    with (
        Bar(disable=not progress) as bar,
        Checker(benchmark, **limits, bar=bar, on_checked=checked, total=total) as checker,
    ):
        for note in notes if progress else ():
            bar.console.print(note, highlight=False)
        _, stats = complete_benchmark(
            model, tokenizer, benchmark, spec, seed=seed, problems=problems, shown=shown,
            bar=bar, on_problem=submit,
        )  # fmt: skip
        generated = time.perf_counter()
        verdicts = checker.verdicts()
    now = time.perf_counter()
    return _Share(samples, verdicts, stats, generated - started, now - started)


def check_workers(spec, local_ranks: int = 1) -> int:
    """Programs one process checks at once: ``evaluation.workers``, else every core this process
    may use but the one that decodes; shared among the ``local_ranks`` evaluating processes of
    this machine."""
    from wmtp.sandbox.checks import default_workers

    machine = spec.workers or max(1, default_workers() - local_ranks)
    return max(1, machine // local_ranks)


def model_settings(model) -> dict[str, str]:
    """Where and how the model ran: device, dtype, attention backend."""
    param = next(model.parameters())
    return {
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "attention": model.attention.name,
    }


__all__ = ["Checker", "check_completions", "evaluate", "evaluate_benchmark"]
