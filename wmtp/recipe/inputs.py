"""The files a recipe reads, checked before any long job starts. Torch-free.

:func:`missing_inputs` lists every input a recipe names that is not there: the tokenizer file,
each model's pretrained ``path`` and trained ``checkpoint`` (only the models its pipeline uses),
the training data (``data.path``, ``data.split.heldout_path``) and the local benchmark files of
``[evaluation]`` (an evaluation recipe's; a training recipe's only with ``benchmarks=True``:
``wmtp validate`` checks them for the ``wmtp eval`` of its run, ``wmtp run`` trains without
them). Each comes with its dotted key, the path as written and the absolute path it
resolved to (relative paths are read from the working directory), located where the recipe set
it. The places a run writes are checked the same way: ``experiment.runs_dir`` must be (or be
creatable as) a directory this user can write, a HumanEval dataset not yet built must be
buildable in ``data.cache_dir``, and ``<runs_dir>/<name>/latest`` the link wmtp keeps, not a file or
folder of the user's (training would fail only when it first points that link at the new run,
at its first checkpoint). ``wmtp run`` refuses to start while any is missing; ``wmtp validate --env`` reports them as
problems of the recipe; plain ``wmtp validate`` notes them (a committed production recipe points
at files a fresh clone does not have).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import CheckpointError

TOKENIZER_FILES = {"sentencepiece": "tokenizer.model", "hf": "tokenizer.json"}
MODEL_MARKERS = ("params.json", "config.json", "wmtp_model.json")


@dataclass(frozen=True)
class MissingInput:
    """One input the recipe names that cannot be read."""

    key: str
    """Dotted recipe key (``model.policy.path``)."""
    written: str
    """The path as the recipe gives it."""
    why: str
    """What is missing, in words, with the resolved path."""

    @property
    def message(self) -> str:
        return f"{self.written!r}: {self.why}"


def missing_inputs(recipe: Any, *, benchmarks: bool = False) -> list[MissingInput]:
    """Every input of ``recipe`` that is not there (see the module docstring), in key order;
    ``benchmarks``: a training recipe's benchmark files too."""
    found = [_tokenizer(recipe.tokenizer)]
    for role in recipe.pipeline.uses:
        spec = getattr(recipe.model, role)
        if spec is not None:
            found += [_model_path(role, spec), _trained_checkpoint(role, spec)]
    if recipe.pipeline.trains is not None:
        found += [*_data(recipe.data), _run_place(recipe.experiment)]
    if _reads_benchmarks(recipe, benchmarks):
        found += _benchmarks(recipe.evaluation)
    return [m for m in found if m is not None]


def _reads_benchmarks(recipe: Any, benchmarks: bool) -> bool:
    """Whether the benchmark files are the recipe's inputs: an evaluation recipe's always, a
    training recipe's when asked (``wmtp validate``: its run's ``wmtp eval`` reads them)."""
    return recipe.pipeline.trains is None or benchmarks


def input_problems(loaded: Any, *, benchmarks: bool = False) -> list[Any]:
    """The missing inputs of a loaded recipe as problems located where the recipe set them
    (file:line, or the ``--set`` that gave the value); ``benchmarks``: as
    :func:`missing_inputs`. A missing ``model.<role>.path`` under the LoRA adapters that role's
    ``checkpoint`` holds is said as their base (:func:`lora_base_problem`)."""
    missing = missing_inputs(loaded.recipe, benchmarks=benchmarks)
    return [
        _missing_lora_base(loaded, m.key) or located_problem(loaded, m.key, m.message)
        for m in missing
    ]


def _missing_lora_base(loaded: Any, key: str) -> Any | None:
    """The problem of a missing ``key`` that is the base model of LoRA adapters a checkpoint of
    this recipe holds: which checkpoint needs it, and what to do; None for any other key."""
    roles = {f"model.{role}.path": role for role in loaded.recipe.pipeline.uses}
    role = roles.get(key)
    spec = getattr(loaded.recipe.model, role) if role is not None else None
    if spec is None or not spec.checkpoint:
        return None
    adapters = _trained_directory(spec.checkpoint)
    return lora_base_problem(loaded, role, adapters) if adapters is not None else None


def _trained_directory(checkpoint: str) -> Path | None:
    """The directory of the weights ``checkpoint`` names; None where there are none (said by
    :func:`_trained_checkpoint` or :func:`_unusable_checkpoint`)."""
    from wmtp.models.locate import find_trained_weights

    try:
        return find_trained_weights(checkpoint).directory
    except CheckpointError:
        return None


def unusable_inputs(loaded: Any, *, benchmarks: bool = False) -> list[Any]:
    """Inputs that are there but cannot be used, each a problem located where the recipe names
    it: each pretrained model the pipeline uses (``model.<role>.path``), read from its
    description as its loader reads it (``wmtp.models.descriptions``: no weights, no torch), that
    wmtp cannot honour or whose sizes or numerics disagree with the recipe's; each trained
    ``model.<role>.checkpoint`` without intact weights, of another role, or trained with a
    recipe that disagrees with this one (:func:`_unusable_checkpoint`); a tokenizer
    file that does not load (a truncated download, another file); a frozen model asked for more
    heads than its weights hold (:func:`_added_heads`); a ``data.path`` that holds no
    rows (:func:`_unusable_data`); and the benchmarks (:func:`_unreadable_benchmarks`; a
    training recipe's files with ``benchmarks``, as :func:`missing_inputs`). A path that is not
    there is :func:`input_problems`'s."""
    problems = []
    tokenizer = loaded.recipe.tokenizer
    vocab, why = _tokenizer_vocab(tokenizer) if _tokenizer(tokenizer) is None else (None, None)
    if why is not None:
        problems.append(located_problem(loaded, "tokenizer.path", f"{tokenizer.path!r}: {why}"))
    for role in loaded.recipe.pipeline.uses:
        spec = getattr(loaded.recipe.model, role)
        found = _unusable_weights(loaded, role, spec, vocab) if spec is not None else []
        if not found and role != loaded.recipe.pipeline.trains:
            found = _added_heads(loaded, role, spec)
        problems += found
    return problems + _unusable_data(loaded) + _unreadable_benchmarks(loaded, benchmarks)


def _unusable_weights(loaded: Any, role: str, spec: Any, vocab: int | None) -> list[Any]:
    """``model.<role>.path`` (:func:`_unusable_model`, its embedding against the tokenizer's
    ``vocab`` ids) and ``checkpoint`` (:func:`_unusable_checkpoint`) that are there but cannot
    be used, as located problems."""
    problems = []
    why = _unusable_model(role, spec, vocab)
    if why is not None:
        problems.append(located_problem(loaded, f"model.{role}.path", f"{spec.path!r}: {why}"))
    if spec.checkpoint and _trained_checkpoint(role, spec) is None:
        problems += _unusable_trained(loaded, role, spec, usable_path=why is None)
    return problems


def _unusable_trained(loaded: Any, role: str, spec: Any, *, usable_path: bool) -> list[Any]:
    """The role's ``checkpoint`` that cannot be used (:func:`_unusable_checkpoint`), or, first,
    a ``usable_path`` that is not the base of the LoRA adapters it holds: said at the path,
    which the user gave to point at that base (:func:`lora_base_problem`). A path that is not
    there is :func:`input_problems`'s."""
    there = usable_path and spec.path and _model_path(role, spec) is None
    adapters = _trained_directory(spec.checkpoint) if there else None
    base = lora_base_problem(loaded, role, adapters) if adapters is not None else None
    if base is not None:
        return [base]
    why = _unusable_checkpoint(role, spec, loaded.recipe)
    if why is None:
        return []
    return [located_problem(loaded, f"model.{role}.checkpoint", f"{spec.checkpoint!r}: {why}")]


def _added_heads(loaded: Any, role: str, spec: Any) -> list[Any]:
    """A frozen model asked for heads its weights do not hold
    (``descriptions.frozen_heads_problem``, which its builder checks again)."""
    from wmtp.models.descriptions import frozen_heads_problem

    if spec is None or spec.kind != "llama_mtp":
        return []
    key = f"model.{role}.n_future_tokens"
    try:
        why = frozen_heads_problem(spec, key)
    except CheckpointError:
        return []  # the weights themselves are the problem: said above, or by the loader
    return [] if why is None else [located_problem(loaded, key, why)]


def _unusable_data(loaded: Any) -> list[Any]:
    """A ``data.path`` that is there but holds no rows wmtp can read (a folder without
    train.jsonl, the metadata file named instead of the rows), as training reads it."""
    from wmtp.data.components import jsonl_train_file
    from wmtp.errors import DataError

    spec = loaded.recipe.data
    if loaded.recipe.pipeline.trains is None or spec.kind != "jsonl":
        return []
    path = _resolved(spec.path)
    if not path.exists():  # missing: _data's note
        return []
    try:
        jsonl_train_file(path)
    except DataError as exc:
        return [located_problem(loaded, "data.path", f"{spec.path!r}: {exc}")]
    return []


def _unreadable_benchmarks(loaded: Any, benchmarks: bool) -> list[Any]:
    """The benchmarks read as an evaluation reads them: an unknown evaluator, a name twice, a
    missing ``=PATH``, a file that does not load. Their names alone while a file they name is
    not there (:func:`input_problems` says so), and for a training recipe unless
    ``benchmarks`` (``wmtp run`` trains without them)."""
    from wmtp.eval.benchmarks import load_benchmarks
    from wmtp.recipe.errors import RecipeProblems

    recipe = loaded.recipe
    read = _reads_benchmarks(recipe, benchmarks) and not any(_benchmarks(recipe.evaluation))
    try:
        load_benchmarks(loaded, read=read)
    except RecipeProblems as exc:
        return exc.problems
    return []


def _unusable_model(role: str, spec: Any, tokenizer_vocab: int | None) -> str | None:
    from wmtp.models.descriptions import (
        check_heads_held,
        check_numerics_agree,
        check_sizes_agree,
        check_vocabulary,
        check_weights_whole,
        checkpoint_format,
        described_args,
    )

    if not spec.path or _model_path(role, spec) is not None:
        return None
    try:
        path = _resolved(spec.path)
        fmt = checkpoint_format(path, spec.format)
        check_weights_whole(path, fmt)
        check_heads_held(path, fmt)
        args = described_args(path, fmt)
        heads = getattr(spec, "n_future_tokens", None)  # a critic has one; resized before compared
        args = args.with_heads(heads) if heads else args
        check_sizes_agree(spec, args, spec.path, f"model.{role}")
        check_numerics_agree(spec, args, spec.path)
        if tokenizer_vocab is not None:
            check_vocabulary(path, fmt, tokenizer_vocab)
    except CheckpointError as exc:
        return str(exc)
    return None


NO_CUDA = "'cuda', but no CUDA device is visible (set it to 'cpu' or 'auto')"
"""What ``parallel.device = "cuda"`` is, on a machine without a GPU (`wmtp validate --env`,
`wmtp run`)."""


def located_problem(loaded: Any, key: str, message: str) -> Any:
    """A problem at ``key`` where the recipe set it (file:line, or the ``--set`` that gave the
    value), or at the recipe itself for a default, saying so."""
    from wmtp.recipe.errors import Problem
    from wmtp.recipe.load import problem_at

    problem = problem_at(loaded.provenance.get(key.split("[")[0]), key, message)
    if problem.file is None and problem.origin is None:  # a default: the recipe itself
        problem = Problem(loaded.path, None, None, key, f"{message} (the default)")
    return problem


def lora_base_problem(loaded: Any, role: str, weights: Path) -> Any | None:
    """A problem at ``model.<role>.path`` where ``weights`` holds LoRA adapters alone (a LoRA
    run's checkpoint, a ``--no-merge-lora`` export) and that key's path is not their base: no
    model there, or not the one they trained over (``assembly.check_lora_base``: a copy of it
    at another path is, where their run recorded its identity); None otherwise. Asked of the
    adapters' own recipe by ``wmtp export`` and ``wmtp eval``
    (``export.source.check_adapters_base``), of a recipe whose ``model.<role>.checkpoint``
    names them by :func:`input_problems` and :func:`unusable_inputs`."""
    from wmtp.assembly import check_lora_base

    spec = getattr(loaded.recipe.model, role, None)
    if spec is None or spec.lora is None or not spec.path or not _adapters_alone(weights):
        return None
    try:
        check_lora_base(role, spec, weights)
    except CheckpointError as exc:
        message = str(exc).removeprefix(f"model.{role}.path = ")  # the problem's key says it
        return located_problem(loaded, f"model.{role}.path", message)
    return None


def _adapters_alone(weights: Path) -> bool:
    """Whether ``weights`` holds LoRA adapters without the base weights they apply to (of a
    recipe that trained LoRA): in their file, or in a checkpoint's sharded state alone."""
    from wmtp.models.locate import FULL_WEIGHTS, LORA_WEIGHTS, sharded_adapters

    alone = (weights / LORA_WEIGHTS).is_file() and not (weights / FULL_WEIGHTS).is_file()
    return alone or sharded_adapters(weights) is not None


def watched_paths(recipe: Any) -> list[str]:
    """The paths whose presence decides :func:`missing_inputs` (for ``wmtp validate``'s cache):
    every input's resolved path, a run directory's ``checkpoints``, and where the run goes."""
    from wmtp.eval.benchmarks import benchmark_entry

    written = [getattr(recipe.tokenizer, "path", None)]
    for role in recipe.pipeline.uses:
        spec = getattr(recipe.model, role)
        if spec is not None:
            written += [spec.path, spec.checkpoint]
    if recipe.data.kind == "jsonl":
        written.append(recipe.data.path)
    written.append(recipe.data.split.heldout_path)
    written += [benchmark_entry(b)[1] for b in recipe.evaluation.benchmarks]
    paths = [_resolved(w) for w in written if w]
    paths += [p / "checkpoints" for p in paths]
    if recipe.pipeline.trains is not None:  # where its run goes (:func:`_run_place`)
        runs = _resolved(recipe.experiment.runs_dir)
        paths += [runs, runs / recipe.experiment.name / "latest"]
    return [str(p) for p in paths]


def _resolved(path: str) -> Path:
    return Path(path).expanduser().resolve()


def tokenizer_warnings(loaded: Any) -> list[Any]:
    """What the recipe's tokenizer does to code that a user should know before training on it
    (:func:`wmtp.data.tokenizers.whitespace_lost`), located at ``tokenizer.path``: warnings,
    not problems, as a tokenizer for text may mean it. None where it does not load (that is
    :func:`unusable_inputs`'s)."""
    from wmtp.data.tokenizers import whitespace_lost
    from wmtp.errors import WmtpError

    spec = loaded.recipe.tokenizer
    path = getattr(spec, "path", None)
    if path is None or _tokenizer(spec) is not None:
        return []
    try:
        why = whitespace_lost(_tokenizer_of(spec.kind, _resolved(path)))
    except WmtpError:
        return []
    return [] if why is None else [located_problem(loaded, "tokenizer.path", f"{path!r}: {why}")]


def _absent(key: str, written: str, what: str) -> MissingInput:
    return MissingInput(key, written, f"{what} (resolved to {_resolved(written)})")


def _tokenizer(spec: Any) -> MissingInput | None:
    path = getattr(spec, "path", None)
    if path is None:
        return None
    name = TOKENIZER_FILES[spec.kind]
    p = _resolved(path)
    if p.is_file() or (p / name).is_file():
        return None
    if p.is_dir():
        return _absent("tokenizer.path", path, f"a directory without {name}")
    return _absent("tokenizer.path", path, f"no such file (a {name}, or a directory holding one)")


def _tokenizer_vocab(spec: Any) -> tuple[int | None, str | None]:
    """The tokenizer's ids (None where it does not load), and why it does not load, if not."""
    from wmtp.errors import WmtpError

    try:
        path = getattr(spec, "path", None)
        return _tokenizer_of(spec.kind, _resolved(path) if path else None).vocab_size, None
    except WmtpError as exc:
        return None, f"cannot be loaded: {exc.render()}"


def _tokenizer_of(kind: str, path: Path | None) -> Any:
    """The tokenizer at ``path``, loaded once for the checks of a command (its ids, what it does
    to code) while its files stay as they were."""
    files = [path] if path is None or path.is_file() else sorted(path.iterdir())
    stamp = tuple((f, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f and f.is_file())
    return _loaded_tokenizer(kind, path, stamp)


@functools.lru_cache(maxsize=4)
def _loaded_tokenizer(kind: str, path: Path | None, stamp: tuple) -> Any:
    from wmtp.data.tokenizers import load_tokenizer

    return load_tokenizer(kind, path)


def _model_path(role: str, spec: Any) -> MissingInput | None:
    if not spec.path:
        return None
    key, p = f"model.{role}.path", _resolved(spec.path)
    if p.is_file() and p.suffix == ".safetensors":
        return None
    if not p.exists():
        return _absent(key, spec.path, "no such directory (pretrained weights)")
    names = {child.name for child in p.iterdir()} if p.is_dir() else set()
    if not names & set(MODEL_MARKERS):
        wanted = "params.json + consolidated.pth (meta), config.json + *.safetensors or .bin (hf)"
        return _absent(key, spec.path, f"no model in it: expected {wanted} or wmtp_model.json")
    return None


def _trained_checkpoint(role: str, spec: Any) -> MissingInput | None:
    if not spec.checkpoint or _resolved(spec.checkpoint).exists():
        return None  # there: whether it can be used is _unusable_checkpoint's
    return _absent(f"model.{role}.checkpoint", spec.checkpoint, "no such run or checkpoint")


def _unusable_checkpoint(role: str, spec: Any, recipe: Any) -> str | None:
    """Why a trained ``checkpoint`` that is there cannot be this role's: no intact weights in
    it, weights of another role (a baseline run named as the critic), or a recipe beside them
    that disagrees with this one (``wmtp.assembly.check_checkpoint_recipe``, which the model's
    build runs again)."""
    from wmtp.assembly import check_checkpoint_recipe
    from wmtp.models.locate import find_trained_weights

    try:
        found = find_trained_weights(spec.checkpoint)
        wrong = wrong_role(found.recipe_file, "critic" if role == "critic" else "policy")
        if wrong is not None:
            return wrong
        check_checkpoint_recipe(role, spec, recipe)
    except CheckpointError as exc:
        return str(exc).removeprefix(f"{spec.checkpoint}: ")
    return None


def wrong_role(recipe_file: Path | None, wanted: str) -> str | None:
    """What is wrong where weights whose recipe is ``recipe_file`` are used as the ``wanted``
    role's ("policy", "critic"): a critic run named as a policy, a baseline run as the critic.
    None where they trained that role, or nothing says which they trained."""
    trained = _pipeline_that_trained(recipe_file)
    if trained is None or trained[1] == wanted:
        return None
    pipeline, what = trained
    kind = " (a value model)" if what == "critic" else ""
    return (
        f"a {pipeline} run, which trained model.{what}{kind}, not a {wanted}: "
        f"name a run of a pipeline that trains the {wanted}"
    )


def _pipeline_that_trained(recipe_file: Path | None) -> tuple[str, str] | None:
    """``(pipeline, the role it trained)`` of the recipe beside trained weights; None when there
    is no recipe, or it names no pipeline that trains (nothing to hold the weights to)."""
    from wmtp.pipelines import PIPELINES
    from wmtp.recipe import _toml

    try:
        recipe = _toml.loads(recipe_file.read_text(encoding="utf-8")) if recipe_file else {}
    except (OSError, UnicodeDecodeError, _toml.TOMLDecodeError):
        return None
    pipeline = recipe.get("experiment", {}).get("pipeline")
    info = PIPELINES.get(pipeline) if isinstance(pipeline, str) else None
    return (pipeline, info.trains) if info is not None and info.trains else None


def _data(spec: Any) -> list[MissingInput | None]:
    found: list[MissingInput | None] = []
    if spec.kind == "jsonl" and not _resolved(spec.path).exists():  # there: _unusable_data
        what = "no such file or directory (a .jsonl file, or a directory holding train.jsonl)"
        found.append(_absent("data.path", spec.path, what))
    elif spec.kind == "humaneval":
        found.append(_humaneval_cache(spec))
    heldout = spec.split.heldout_path
    if heldout is not None and not _resolved(heldout).is_file():
        found.append(_absent("data.split.heldout_path", heldout, "no such file"))
    return found


def _humaneval_cache(spec: Any) -> MissingInput | None:
    """Why the built-in HumanEval dataset, not yet built in ``data.cache_dir``, cannot be built
    there (a built one is only read: a read-only shared copy serves)."""
    from wmtp.folders import why_unwritable

    reason = why_unwritable(Path(spec.cache_dir).expanduser())
    if reason is None:
        return None
    from wmtp.data import humaneval  # (numpy) only for a folder that cannot be written

    if humaneval.is_built(humaneval.built_dir(spec.cache_dir, spec.split.heldout_fraction)):
        return None
    what = f"HumanEval is not built there yet, and cannot be: {reason}"
    return MissingInput("data.cache_dir", spec.cache_dir, what)


def _run_place(spec: Any) -> MissingInput | None:
    """Why ``<runs_dir>/<name>/`` cannot hold a new run directory and its ``latest`` link, if
    it cannot: a file where a folder must be, a folder this user cannot write, or a ``latest``
    that is not a symlink."""
    from wmtp.folders import why_unwritable

    experiment = Path(spec.runs_dir).expanduser().absolute() / spec.name  # links as they are
    reason = why_unwritable(experiment)
    if reason is not None:
        what = f"{reason}: runs go to <runs_dir>/{spec.name}/"
        return MissingInput("experiment.runs_dir", spec.runs_dir, what)
    latest = experiment / "latest"
    if latest.exists() and not latest.is_symlink():
        what = (
            f"{latest} is not the symlink wmtp keeps to the newest run of {spec.name!r}: "
            "move it away (or set experiment.runs_dir or experiment.name)"
        )
        return MissingInput("experiment.runs_dir", spec.runs_dir, what)
    return None


def _benchmarks(spec: Any) -> list[MissingInput | None]:
    from wmtp.eval.benchmarks import benchmark_entry

    found: list[MissingInput | None] = []
    for i, entry in enumerate(spec.benchmarks):
        name, path = benchmark_entry(entry)
        if path and not _resolved(path).exists():  # there but unreadable: _unreadable_benchmarks
            found.append(_absent(f"evaluation.benchmarks[{i}]", path, f"no {name} file"))
    return found


__all__ = [
    "NO_CUDA",
    "MissingInput",
    "input_problems",
    "located_problem",
    "lora_base_problem",
    "missing_inputs",
    "unusable_inputs",
    "watched_paths",
]
