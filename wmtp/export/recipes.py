"""The recipes and facts an export carries: the training recipe as it was, the same recipe reading
the export (so ``wmtp eval DIR`` and ``wmtp bench decode --checkpoint DIR`` take it like any run),
the run's fingerprint, and the facts of the model card."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from wmtp.export.card import CardFacts
from wmtp.export.formats import RECIPE_FORMAT
from wmtp.export.run_info import Lineage, eval_results
from wmtp.export.source import Source, source_recipe_text
from wmtp.recipe.specs.models import SIZE_FIELDS

TRAINING_RECIPE = "training_recipe.toml"
FINGERPRINT = "fingerprint.json"
HEADER = (
    "# Written by `wmtp export`: the recipe that trained this model ({training}), reading the\n"
    "# exported folder. `wmtp eval` and `wmtp bench decode --checkpoint` use it wherever the\n"
    "# folder is (the tokenizer file it holds is read).\n"
)
OVER_A_BASE = (
    "# The LoRA adapters here apply to the base model at model.{role}.path. Where it has moved,\n"
    "# `wmtp eval` takes --set model.{role}.path=NEW if wmtp_export.json records the identity of\n"
    "# the base they trained over (made_from.bases): the model there is checked against it.\n"
)
"""The header's words for an export whose adapters are kept apart (``--no-merge-lora``)."""


def training_files(src: Source, recipe, staging: Path) -> list[str]:
    """``training_recipe.toml`` (as the run wrote it) and the run's ``fingerprint.json``; an
    export of an export carries its source's."""
    earlier = src.weights / TRAINING_RECIPE
    if earlier.is_file():
        shutil.copyfile(earlier, staging / TRAINING_RECIPE)
    else:
        (staging / TRAINING_RECIPE).write_text(source_recipe_text(src, recipe))
    fingerprint = _fingerprint_file(src)
    if fingerprint is None:
        return [TRAINING_RECIPE]
    shutil.copyfile(fingerprint, staging / FINGERPRINT)
    return [TRAINING_RECIPE, FINGERPRINT]


def _fingerprint_file(src: Source) -> Path | None:
    for folder in (src.run, src.weights):
        if folder is not None and (folder / FINGERPRINT).is_file():
            return folder / FINGERPRINT
    return None


def reading_recipe(
    recipe,
    role: str,
    *,
    to: str,
    out: Path,
    tokenizer_file: str | None,
    adapters_apart: bool,
    context: int,
    dtype: str,
) -> str:
    """The training recipe with ``model.<role>`` reading ``out`` in the export's ``dtype`` (its
    sizes and heads from the files there; the ``context`` it trained at from the recipe where the
    format cannot hold it:
    Meta's ``params.json``) and, where the tokenizer is a file, ``tokenizer.path`` the exported
    one. With the adapters kept apart the section keeps its base ``path`` (made absolute: it is
    read from wherever the export is used) and ``lora``: the folder is then a checkpoint over that
    base."""
    from wmtp.recipe.dump import dumps, recipe_data

    data = recipe_data(recipe)
    section = data["model"][role]
    section.pop("checkpoint", None)
    _compute_in(section, dtype)
    if adapters_apart:
        section["path"] = base_path(section["path"])
    else:
        for key in (*SIZE_FIELDS, "flavour", "n_future_tokens", "lora"):
            section.pop(key, None)
        section.update(path=str(out), format=RECIPE_FORMAT[to])
        if to == "meta":  # else a reader takes max_seq_len's default, not the trained context
            section["max_seq_len"] = context
            if recipe.data.max_length > context:  # the defaults of a model directory's recipe
                data.setdefault("data", {})["max_length"] = context
    if tokenizer_file is not None:
        data["tokenizer"]["path"] = str(out / tokenizer_file)
    header = HEADER + (OVER_A_BASE if adapters_apart else "")
    return header.format(training=TRAINING_RECIPE, role=role) + dumps(data)


def _compute_in(section: dict, dtype: str) -> None:
    """The model section computing in ``dtype``, the weights' own: ``wmtp eval`` and ``wmtp
    bench decode`` of the export run it as written. An attention backend that runs in half
    precision only becomes ``auto`` for a float32 export."""
    from wmtp.models.backends import BACKENDS, HALF_DTYPES

    section["dtype"] = dtype
    backend = BACKENDS.get(section.get("attention", "auto"))
    if backend is not None and backend.half_only and dtype not in HALF_DTYPES:
        section["attention"] = "auto"


def base_path(path: str) -> str:
    """The base model ``path`` of a recipe as an absolute path (relative ones are read from the
    working directory)."""
    return os.path.abspath(Path(path).expanduser())


def card_facts(job: Any, model, files: list[str], tokenizer_files, reading: Path) -> CardFacts:
    """The model card's facts of an export job (``wmtp.export.run._Job``) whose ``recipe.toml``
    is ``reading``."""
    src, recipe, origin = job.src, job.recipe, job.origin
    return CardFacts(
        title=_title(src, recipe, origin),
        to=job.to,
        out=job.out_as_given,
        kind=job.spec.kind,
        heads_exported=job.heads_exported,
        heads_trained=job.heads_trained,
        dtype=job.dtype,
        parameters=sum(p.numel() for p in model.parameters()),
        source=str(src.weights),
        pipeline=recipe.experiment.pipeline,
        trained_by_wmtp=recipe.trained_role is not None,
        lora=job.lora,
        base=base_path(job.spec.path) if job.adapters_apart else None,
        model_section=_model_section(reading, job.role),
        files=files,
        tokenizer=tokenizer_files,
        training=origin.training,
        results=eval_results(src.weights, src.run, origin.step),
        fingerprint=_fingerprint(src),
        sizes=_sizes(model.args),
    )


def _title(src: Source, recipe, origin: Lineage) -> str:
    """The run and step the weights come from (through an earlier export), else the folder."""
    if origin.run is None:
        return f"{recipe.experiment.name}: {src.weights.name}"
    at_step = "" if origin.step is None else f", step {origin.step}"
    return f"{recipe.experiment.name}: run {origin.run.name}{at_step}"


def _model_section(reading: Path, role: str) -> str:
    """``[model.<role>]`` of the recipe ``reading``, as TOML."""
    from wmtp.recipe._toml import loads
    from wmtp.recipe.dump import dumps

    section = loads(reading.read_text())["model"][role]
    return dumps({"model": {role: section}})


def _sizes(args) -> dict[str, int]:
    return {
        "dim": args.dim,
        "layers": args.n_layers,
        "attention heads": args.n_heads,
        "key/value heads": args.kv_heads,
        "vocabulary": args.vocab_size,
        "context": args.max_seq_len,
    }


def _fingerprint(src: Source) -> dict | None:
    file = _fingerprint_file(src)
    try:
        return json.loads(file.read_text()) if file is not None else None
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["card_facts", "reading_recipe", "training_files"]
