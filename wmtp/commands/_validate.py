"""``wmtp validate``: check recipes and print what they cost, without importing Typer or torch.

The Typer command (``wmtp.commands.recipe.validate``) owns the options and the help; it calls
:func:`run`. The console script calls :func:`fast_main` first: the same options parsed by
argparse and, for a command line whose inputs have not changed, the cached report
(:class:`ReportCache`), printed without importing Typer or pydantic (0.15 s instead of ~0.6 s on
a 2-core machine). Anything it does not handle goes to Typer (``tests/commands/
test_validate_fast.py`` checks both print and exit alike). ``--data`` reads the recipes' data
(``wmtp.train.lengths``), which the cache does not track: its reports are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wmtp.atomic import write_text
from wmtp.commands._output import USER_ERROR_EXIT, err_console, report_error
from wmtp.errors import WmtpError

if TYPE_CHECKING:
    from wmtp.train.lengths import LongestRow

DEFAULT_RECIPES = "recipes"
"""``wmtp validate`` with no argument checks every ``*.toml`` here."""


def run(
    paths: Sequence[Path],
    overrides: Sequence[str],
    world_size: int,
    env: bool,
    fmt: str,
    read: list[str] | None = None,
    *,
    data: bool = False,
) -> int:
    """Validate ``paths``, print the report (text or one JSON document); the exit code.
    ``read`` collects every file the report depends on (recipes, their bases, model configs);
    ``data`` sizes memory by the longest row of each recipe's data (which it reads)."""
    machine = _environment() if env else None
    text = fmt == "text"
    if text and machine:  # what the recipes are checked against, before their verdicts
        print("this machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    results = [_validate_one(p, overrides, world_size, machine, text, read, data) for p in paths]
    if not text:
        print(json.dumps({"recipes": results, "environment": machine}, indent=2))
    return 0 if all(r["valid"] for r in results) else USER_ERROR_EXIT


def fast_main(argv: Sequence[str]) -> int | None:
    """``wmtp validate ARGS`` without Typer; ``None`` hands anything else (``--help``, a
    malformed option, no recipes) to the Typer command, which owns the help and its errors."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("recipes", nargs="*", type=Path)
    parser.add_argument("--world-size", "-n", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--env", action="store_true")
    parser.add_argument("--data", action="store_true")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    if any(a in ("--help", "-h") for a in argv):
        return None
    try:
        args, unknown = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return None
    paths = args.recipes or default_recipes()
    if unknown or args.world_size < 1 or not paths:
        return None
    # --env reads the machine, --data the data files: neither is in the cache's key; a recipe
    # read from a pipe can be read only once (by the validation)
    piped = any(p.exists() and not p.is_file() and not p.is_dir() for p in paths)
    cache = None if args.env or args.data or piped else ReportCache.for_command(list(argv))
    if cache is not None and (hit := cache.lookup()) is not None:
        sys.stdout.write(hit["stdout"])
        return hit["code"]
    read: list[str] = []
    out = _Tee(sys.stdout)  # printed as it comes (problems on stderr stay in order), and kept
    try:
        with contextlib.redirect_stdout(out):
            code = run(
                paths, args.overrides, args.world_size, args.env, args.format, read, data=args.data
            )
    except WmtpError as exc:
        report_error(exc, fmt=args.format)
        return USER_ERROR_EXIT
    if cache is not None and code == 0:  # reports of invalid recipes are never kept
        cache.store(read, out.getvalue(), code)
    return code


class _Tee(io.StringIO):
    """Keeps what is written and passes it on to ``stream`` at once."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


class ReportCache:
    """The last report of a ``wmtp validate`` command line, kept while nothing it depends on
    changes: the files it read (recipes, their bases, model configs) and wmtp's recipe and
    estimate code. Like ruff's or mypy's caches: a repeated validation skips importing pydantic
    and building the schema (most of its time). Under ``$WMTP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/wmtp`` or ``~/.cache/wmtp``; ``WMTP_NO_CACHE=1`` turns it off."""

    SOURCES = (
        "recipe",
        "estimate.py",
        "errors.py",
        "pipelines.py",
        "assembly.py",
        "models/args.py",
        "models/backends.py",
        "models/locate.py",
        "models/descriptions.py",
        "models/value_heads.py",
        "data/tokenizers.py",
        "data/components.py",
        "eval/benchmarks.py",
        "registry.py",
        "commands/_validate.py",
    )
    """wmtp's code that decides a report (under the package directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_command(cls, argv: list[str]) -> ReportCache | None:
        if os.environ.get("WMTP_NO_CACHE"):
            return None
        root = os.environ.get("WMTP_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wmtp"
        )
        package = Path(__file__).resolve().parents[1]
        code = sorted(
            str(f)
            for name in cls.SOURCES
            for f in ([package / name] if name.endswith(".py") else (package / name).rglob("*.py"))
        )
        code += _pydantic_version_file()
        key = json.dumps([1, os.getcwd(), argv, _digests(code)])
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return cls(Path(root) / "validate" / f"{name}.json")

    def lookup(self) -> dict | None:
        try:
            entry = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return entry if _digests(list(entry["inputs"])) == entry["inputs"] else None

    def store(self, read: list[str], stdout: str, code: int) -> None:
        entry = {"inputs": _digests(sorted(set(read))), "stdout": stdout, "code": code}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(entry))  # a concurrent reader: old or new entry
        except OSError:
            pass  # a read-only home: validate without a cache


def _pydantic_version_file() -> list[str]:
    """pydantic's ``version.py`` (found, not imported): another pydantic may judge otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("pydantic")
    origin = spec.origin if spec is not None else None
    return [str(Path(origin).with_name("version.py"))] if origin else []


def _digests(files: list[str]) -> dict[str, str]:
    """sha256 of each file's bytes, of a directory's sorted listing (each entry's name, size and
    time of change: a file edited inside, a tokenizer.json in a tokenizer directory, is seen
    without reading it), or ``missing`` for a path that does not exist."""
    out = {}
    for f in files:
        path = Path(f)
        try:
            if path.is_dir():
                listing = "\n".join(sorted(_entry(p) for p in path.iterdir()))
                out[f] = "dir:" + hashlib.sha256(listing.encode()).hexdigest()
            else:
                out[f] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            out[f] = "missing"
    return out


def _entry(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:  # a broken link
        return f"{path.name} -"
    return f"{path.name} {stat.st_size} {stat.st_mtime_ns}"


def default_recipes() -> list[Path]:
    return sorted(Path(DEFAULT_RECIPES).glob("*.toml"))


def _validate_one(
    path: Path,
    overrides: Sequence[str],
    world_size: int,
    machine: dict | None,
    text: bool,
    read: list[str] | None = None,
    data: bool = False,
) -> dict[str, Any]:
    """Load, estimate and (with a machine) check one recipe; print it when ``text``. With
    ``data``, memory is sized by the longest row of the recipe's data."""
    from wmtp.estimate import estimate
    from wmtp.recipe import RecipeProblems, load_recipe

    try:
        loaded = load_recipe(path, overrides)
        _check_usable(loaded)
        row = _longest_row(loaded) if data else None
    except RecipeProblems as exc:
        if text:
            _print_problem("invalid:", exc.render())
        return {"recipe": str(path), "valid": False, **exc.to_json()}
    from wmtp.recipe.inputs import input_problems, tokenizer_warnings, watched_paths

    if read is not None:
        read += [str(Path(f).resolve()) for f in loaded.files] + _model_files(loaded.recipe)
        read += watched_paths(loaded.recipe)  # the inputs' presence decides the notes
    cost = estimate(loaded.recipe, world_size, row_tokens=row.tokens if row else None)
    missing = [p.render() for p in input_problems(loaded, benchmarks=True)]
    env_problems = []
    if machine:  # --env: the inputs must be here, and the recipe's choices must run here
        env_problems = missing + _environment_problems(loaded, machine, world_size)
    else:  # a committed recipe names files a fresh clone does not have: noted, not failed
        cost.notes.extend(f"input not found: {m}" for m in missing)
    cost.notes.extend(w.render() for w in tokenizer_warnings(loaded))
    if text:
        _print_estimate(str(path), loaded.recipe, cost, env_problems, row, machine)
    return {
        "recipe": str(path),
        "valid": not env_problems,
        "estimate": cost.to_json() | (row.to_json() if row else {}),
        "missing_inputs": missing,
        "environment_problems": env_problems,
    }


def _longest_row(loaded: Any) -> LongestRow | None:
    """``wmtp.train.lengths.longest_row`` of a recipe that trains (``None`` for evaluation);
    a data problem becomes a problem of the recipe, located where the recipe names the data."""
    from wmtp.errors import RecipeDataError
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import located_problem
    from wmtp.train.lengths import longest_row

    if loaded.recipe.trained_role is None:
        return None
    try:
        return longest_row(loaded.recipe)
    except RecipeDataError as exc:
        problem = located_problem(loaded, exc.key, exc.message)
        raise RecipeProblems(loaded.path, [problem]) from None


def _check_usable(loaded: Any) -> None:
    """The pretrained models, tokenizer and benchmarks the recipe names, as their loaders read
    them (``unusable_inputs``): present but unusable is a problem of the recipe, not a note.
    A training recipe's benchmark files too: ``wmtp eval`` of its run reads them."""
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import unusable_inputs

    problems = unusable_inputs(loaded, benchmarks=True)
    if problems:
        raise RecipeProblems(loaded.path, problems)


def _model_files(recipe: Any) -> list[str]:
    """The JSON files beside each model's weights (sizes the estimate may read from them) and
    the weights files (whose completeness the check reads)."""
    found = []
    for role in ("policy", "reference", "critic"):
        spec = getattr(recipe.model, role, None)
        for where in (getattr(spec, "path", None), getattr(spec, "checkpoint", None)):
            if where and Path(where).is_dir():
                files = [*Path(where).rglob("*.json"), *Path(where).glob("*.safetensors")]
                files += Path(where).rglob("recipe.toml")  # what trained a checkpoint
                files += Path(where).glob("*.pth")
                found += [str(p.resolve()) for p in sorted(files)]
    return found


def _print_estimate(
    path: str,
    recipe: Any,
    cost: Any,
    env_problems: list[str],
    row: LongestRow | None = None,
    machine: dict | None = None,
) -> None:
    from wmtp.estimate import GIB

    exp = recipe.experiment
    if env_problems:
        print(f"{path}: valid, but cannot run here ({exp.name}, pipeline {exp.pipeline})")
    else:
        print(f"{path}: ok ({exp.name}, pipeline {exp.pipeline})")
    device = recipe.parallel.device  # auto runs on the CPU of a machine without a GPU (--env)
    on_cpu = device == "cpu" or (device == "auto" and machine is not None and not machine["cuda"])
    unit = "process" if on_cpu else "GPU"
    trains = recipe.pipeline.trains is not None
    if trains:  # an evaluation has no optimizer step
        _print_batch(recipe, cost, unit)
    for model in cost.models:
        if model.args is not None:
            trained = f", {model.trainable:,} trained" if trains else ""
            print(f"  model.{model.role}: {model.total:,} parameters{trained}")
    if cost.memory is not None:
        parts = ", ".join(
            f"{k} {v / GIB:.2f}" for k, v in cost.memory.parts().items() if k != "total" and v
        )
        print(
            f"  memory/{unit} ~{cost.memory.total / GIB:.2f} GiB ({_memory_of(recipe, cost)}): {parts}"
        )
        if row is not None:
            print(f"  memory sized at rows of {row.tokens:,} tokens ({_row_origin(recipe, row)})")
    for note in row.notes if row else ():
        print(f"  note: data: {note}")
    for note in cost.notes:
        print(f"  note: {note}")
    for problem in env_problems:
        _print_problem("cannot run here:", problem, indent="  ")


def _print_batch(recipe: Any, cost: Any, unit: str) -> None:
    """The line of a training recipe's optimizer step: examples and tokens."""
    units = unit if cost.world_size == 1 else f"{unit}es" if unit == "process" else f"{unit}s"
    examples = "pairs" if recipe.pipeline.examples == "pairs" else "sequences"
    print(
        f"  batch {cost.effective_batch} {examples}/step "
        f"({recipe.training.micro_batch_size} x {recipe.training.grad_accum_steps} accum "
        f"x {cost.world_size} {units}), {cost.tokens_per_step:,} tokens/step"
    )


def _memory_of(recipe: Any, cost: Any) -> str:
    """What the memory line counts: training's sharding and world size, or the rows an
    evaluation decodes together and the positions of each one's KV cache."""
    from wmtp.estimate import EvalMemory

    if isinstance(cost.memory, EvalMemory):
        rows, positions = cost.memory.rows, cost.memory.positions
        return f"evaluation: KV cache of {rows:,} rows x {positions:,} positions"
    return f"{recipe.parallel.sharding}, world size {cost.world_size}"


def _row_origin(recipe: Any, row: LongestRow) -> str:
    if row.source == "max_length":
        return row.of
    return f"longest in the data, of {row.of}; max_length {recipe.data.max_length:,}"


def _print_problem(label: str, message: str, indent: str = "") -> None:
    """``label message`` on stderr, the label in bold red (rich is imported only for problems:
    valid recipes print plain text)."""
    from rich.markup import escape

    sys.stdout.flush()  # the report's stdout lines before this one, in a terminal and in a log
    err_console().print(
        f"{indent}[bold red]{label}[/] {escape(message)}", highlight=False, soft_wrap=True
    )


def _environment() -> dict[str, Any]:
    """What this machine offers: torch version, GPUs, bf16, flash-attn."""
    import importlib.util

    import torch

    from wmtp.estimate import host_memory

    cuda = torch.cuda.is_available()
    flash = importlib.util.find_spec("flash_attn") is not None
    if flash:
        try:
            import flash_attn  # noqa: F401
        except Exception:  # installed but broken (wrong CUDA / torch build)
            flash = False
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "gpu_memory_gib": _gib(torch.cuda.get_device_properties(0).total_memory) if cuda else None,
        "host_memory_gib": _gib(host_memory()),
        "flash_attn": flash,
        "sandbox": _sandbox_isolation(),
    }


def _gib(n: int) -> float:
    from wmtp.estimate import GIB

    return round(n / GIB, 1)


def _sandbox_isolation() -> str:
    """The isolation the code-execution sandbox would use here, in one line."""
    from wmtp.sandbox import isolation_line

    return isolation_line()


def _environment_problems(loaded: Any, machine: dict, world_size: int) -> list[str]:
    """What in the recipe cannot run on this machine, each located where the recipe set it:
    the device, each model's attention backend (for its use: the trained model's gradients
    flow through it) and dtype, float8, the world size, the memory estimate, and code the
    sandbox runs (an evaluation's, or the labelling of a HumanEval build)."""
    recipe = loaded.recipe
    device = recipe.parallel.device
    if device == "auto":
        device = "cuda" if machine["cuda"] else "cpu"
    problems = []
    if recipe.parallel.device == "cuda" and not machine["cuda"]:
        from wmtp.recipe.inputs import NO_CUDA

        problems.append(_at(loaded, "parallel.device", NO_CUDA))
    for role in recipe.pipeline.uses:
        spec = getattr(recipe.model, role)
        if spec is not None:
            problems += _model_problems(loaded, role, spec, device, machine)
    if recipe.parallel.float8 is not False:
        problems += _float8_problems(loaded, device)
    if machine["cuda"] and world_size > machine["gpus"]:
        problems.append(f"--world-size {world_size}, but this machine has {machine['gpus']} GPUs")
    problems += _memory_problems(loaded, machine, world_size, device)
    if machine["sandbox"].startswith("none"):
        problems += _sandbox_problems(loaded, machine["sandbox"])
    return problems


def _sandbox_problems(loaded: Any, isolation: str) -> list[str]:
    """Code this recipe runs where the sandbox cannot (``isolation``, the machine's ``none: ...``
    line): an evaluation's generated code, or a training recipe's built-in HumanEval that is not
    built yet, whose candidates ``wmtp run`` would label in the sandbox (the message it stops
    with, ``humaneval.sandbox_refusal``)."""
    recipe = loaded.recipe
    if recipe.pipeline.trains is None:
        why = isolation.removeprefix("none: ")
        message = f"the benchmarks' generated programs run in the sandbox: {why}"
        return [_at(loaded, "evaluation.benchmarks", message)]
    from wmtp.data import humaneval

    message = humaneval.sandbox_refusal(recipe.data)
    return [] if message is None else [_at(loaded, "data.cache_dir", message)]


def _memory_problems(loaded: Any, machine: dict, world_size: int, device: str) -> list[str]:
    """The estimate per process against a GPU's memory, or on the CPU against this machine's
    memory shared by the processes (past it the kernel kills a run without a word)."""
    from wmtp.estimate import GIB, estimate, memory_shortfall

    cost = estimate(loaded.recipe, world_size)
    if device == "cuda" and machine["gpu_memory_gib"]:
        why = memory_shortfall(cost, int(machine["gpu_memory_gib"] * GIB), "the GPU's memory")
    else:
        host = int(machine["host_memory_gib"] * GIB)
        why = memory_shortfall(cost, host, "this machine's memory", world_size)
    return [] if why is None else [_at(loaded, cost.memory.KEY, why)]


def _float8_problems(loaded: Any, device: str) -> list[str]:
    """Why ``parallel.float8`` cannot run on ``device`` of this machine (what `wmtp run` would
    refuse when it starts)."""
    import torch

    from wmtp.parallel.float8 import why_not

    why = why_not(torch.device(device))
    return [] if why is None else [_at(loaded, "parallel.float8", why)]


def _model_problems(loaded: Any, role: str, spec: Any, device: str, machine: dict) -> list[str]:
    from wmtp.models.backends import AUTO, BACKENDS

    problems = []
    training = role == loaded.recipe.pipeline.trains
    if spec.attention != AUTO:
        why = BACKENDS[spec.attention].why_not(device, spec.dtype, training=training)
        if why is not None:
            key = f"model.{role}.attention"
            problems.append(_at(loaded, key, f"{spec.attention!r} cannot run here: {why}"))
    if spec.dtype == "bfloat16" and device == "cuda" and machine["cuda"] and not machine["bf16"]:
        problems.append(_at(loaded, f"model.{role}.dtype", f"{machine['gpu_name']} has no bf16"))
    return problems


def _at(loaded: Any, key: str, message: str) -> str:
    """``message`` about ``key``, located where the recipe set it."""
    from wmtp.recipe.inputs import located_problem

    return located_problem(loaded, key, message).render()
