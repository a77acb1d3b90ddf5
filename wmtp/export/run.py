"""``wmtp export``: a checkpoint or model, built as training and ``wmtp eval`` build it, written in
another format with its tokenizer, its recipe and a model card.

The steps, in order (every check that needs no model comes before one is built, and everything is
written under a temporary name, so a refused or failed export leaves nothing behind):

1. the source (``wmtp.export.source``): run, checkpoint or model directory, checked whole, and its
   recipe; the model section the recipe trains (``policy``, or ``critic``);
2. what the target format can hold (``wmtp.export.formats.check_target_holds``), the output folder
   (new, empty, or with ``--force`` an earlier export: ``wmtp.output_folder``);
3. the model, on the CPU, in the export dtype (float32 to fold LoRA adapters trained in another):
   ``wmtp.assembly.trained_model`` over the consolidated weights (read from DCP ``state/`` when
   the checkpoint has no consolidated file);
4. LoRA folded into the weights, then cast to the export dtype (or kept apart, ``--to wmtp``),
   heads kept or cut to head 1;
5. the weights (``hf``, ``meta``, ``wmtp``), the tokenizer files, ``recipe.toml`` (the training
   recipe reading this folder: ``wmtp eval DIR`` works), ``training_recipe.toml``,
   ``fingerprint.json`` and ``README.md``; last ``wmtp_export.json``, the list of what it wrote
   and what it was made from (checkpoint; the run, step and training facts it traces back to,
   through an earlier export: ``wmtp eval`` of the export reads the step, an export of it the
   rest; ``wmtp.export.run_info.Lineage``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import ExportError
from wmtp.export import EXPORT
from wmtp.export.formats import TARGETS, check_target_holds
from wmtp.export.hf import DEFAULT_MAX_SHARD_BYTES
from wmtp.export.run_info import Lineage, lineage
from wmtp.export.source import (
    Source,
    check_base_kept,
    check_out_apart,
    is_export,
    planned_steps,
    resolve_source,
    source_recipe,
    training_now,
    verify_checkpoint,
)
from wmtp.output_folder import check_output, staged_output

HEADS = ("all", "1")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote."""

    out: Path
    to: str
    files: list[str]
    heads: int
    dtype: str
    kind: str
    """``llama_mtp``, or ``value_model`` (a critic: no heads to predict tokens with)."""
    source: Source


def export_model(
    source: str | Path,
    *,
    to: str,
    out: str | Path,
    merge_lora: bool = True,
    dtype: str | None = None,
    heads: str = "all",
    force: bool = False,
    recipe: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
    console: Any = None,
) -> ExportResult:
    """Export ``source`` to ``out`` in format ``to`` (the module docstring says how).

    ``dtype``: of the written weights (default: the recipe's model dtype); ``heads``: ``all``, or
    ``1`` for the next-token model alone; ``recipe``: for a source without one beside it;
    ``overrides``: the user's ``--set`` on the source's recipe (a LoRA base moved elsewhere).
    """
    assert to in TARGETS and heads in HEADS, (to, heads)
    src = resolve_source(source, recipe)
    verify_checkpoint(src)
    loaded = source_recipe(src, overrides)
    role = loaded.trained_role or "policy"
    spec = getattr(loaded.model, role)
    if spec is None:
        raise ExportError(f"{src.recipe_file}: [model.{role}] is missing: nothing to export")
    check_target_holds(spec, to, merge_lora, f"{src.weights} (model.{role})")
    check_base_kept(src, spec)
    check_out_apart(Path(out), src)
    out_dir = check_output(Path(out), EXPORT, force=force, source=src.weights)
    _say_if_training(src)
    dtype = dtype or spec.dtype
    origin = _lineage(src)
    job = _Job(src, loaded, role, spec, to, dtype, str(out), out_dir, origin, progress, console)
    made_from = origin.made_from(src.weights)
    with staged_output(out_dir, EXPORT, force=force, made_from=made_from) as staging:
        files = job.run(
            staging, merge_lora=merge_lora, heads=heads, max_shard_bytes=max_shard_bytes
        )
    files = [*files, EXPORT.marker]  # written last, by staged_output
    return ExportResult(out_dir, to, files, job.heads_exported, dtype, spec.kind, src)


def _say_if_training(src: Source) -> None:
    """A warning where the source's run trains now: its checkpoint is a snapshot of it."""
    holder = training_now(src)
    if holder is None:
        return
    planned = planned_steps(src)
    of = f" of {planned} planned" if planned else ""
    log.warning(
        "%s is still training (%s): exporting step %s%s, its checkpoint so far; export again "
        "once the run ends for its final weights",
        src.run,
        holder,
        src.step,
        of,
    )


def _lineage(src: Source) -> Lineage:
    """The run and step ``src`` comes from (through an earlier export), and its training facts."""
    step = src.step if src.trained or is_export(src.weights) else None
    return lineage(src.weights, src.run, step)


@dataclass
class _Job:
    """One export's settled inputs; ``run`` writes everything into the staging folder."""

    src: Source
    recipe: Any
    role: str
    spec: Any
    to: str
    dtype: str
    out_as_given: str
    out: Path
    origin: Lineage
    progress: bool
    console: Any
    heads_trained: int = 1
    heads_exported: int = 1
    lora: str | None = None

    def run(self, staging: Path, *, merge_lora: bool, heads: str, max_shard_bytes: int):
        from wmtp.export.progress import stage
        from wmtp.export.tokenizer_files import write_tokenizer

        reading = f"reading {self.src.weights} into a model on the CPU"
        with stage(reading, self.progress, self.console):
            model, tokenizer = self.build(staging, merge_lora=merge_lora)
        self.adapt(model, merge_lora=merge_lora, heads=heads)
        files = self.write_weights(model, tokenizer, staging, max_shard_bytes)
        written = write_tokenizer(self.recipe.tokenizer, tokenizer, staging, model.args.max_seq_len)
        files += written.files
        files += self.write_recipes(staging, written.tokenizer_file, model.args.max_seq_len)
        files += self.write_card(model, staging, files, written)
        return files

    def build(self, staging: Path, *, merge_lora: bool):
        """The model as ``wmtp eval`` builds it, on the CPU in :meth:`build_dtype`."""
        from wmtp import assembly
        from wmtp.export.consolidate import weights_directory
        from wmtp.recipe import dump_recipe

        staged = staging / ".consolidated"
        weights = weights_directory(self.src, self.spec, staged, dump_recipe(self.recipe))
        tokenizer = assembly.tokenizer(self.recipe)
        model = assembly.trained_model(
            self.recipe,
            self.role,
            weights,
            tokenizer=tokenizer,
            device="cpu",
            dtype=self.build_dtype(merge_lora),
            attention="sdpa",  # runs anywhere; the export writes weights, not kernels
        )
        shutil.rmtree(staged, ignore_errors=True)
        return model, tokenizer

    def build_dtype(self, merge_lora: bool) -> str:
        """The export dtype, but float32 where LoRA adapters are folded into weights of another
        dtype than the one they trained in: each merged weight is then rounded once, to the
        export dtype, rather than its parts first and their sum again."""
        folds_across = merge_lora and self.spec.lora is not None and self.spec.dtype != self.dtype
        return "float32" if folds_across else self.dtype

    def adapt(self, model, *, merge_lora: bool, heads: str) -> None:
        """LoRA folded in (or kept), in the export dtype; heads kept or cut to head 1."""
        from wmtp.models.llama_mtp import resolve_dtype
        from wmtp.models.lora import fold_lora

        if self.spec.lora is not None:
            if merge_lora:
                fold_lora(model)
                model.to(resolve_dtype(self.dtype))
                self.lora = "merged into the weights"
            else:
                self.lora = "kept apart"
        self.heads_trained = getattr(model, "n_heads", 1)
        if heads == "1" and self.heads_trained > 1:
            model.set_heads(1)
        self.heads_exported = getattr(model, "n_heads", 1)

    def write_weights(self, model, tokenizer, staging: Path, max_shard_bytes: int) -> list[str]:
        from wmtp.export.formats import write_meta_model, write_wmtp_model
        from wmtp.export.hf import write_hf_model
        from wmtp.models.llama_mtp import resolve_dtype

        dtype, shown = (
            resolve_dtype(self.dtype),
            {"progress": self.progress, "console": self.console},
        )
        if self.to == "hf":
            ids = {
                "bos_token_id": tokenizer.bos_id,
                "eos_token_id": tokenizer.eos_id,
                "pad_token_id": tokenizer.pad_id,
            }
            return write_hf_model(
                model, staging, dtype=dtype, token_ids=ids, max_shard_bytes=max_shard_bytes, **shown
            )
        if self.to == "meta":
            return write_meta_model(model, staging, dtype=dtype, **shown)
        return write_wmtp_model(model, staging, adapters_only=self.adapters_apart)

    @property
    def adapters_apart(self) -> bool:
        return self.lora == "kept apart"

    def write_recipes(self, staging: Path, tokenizer_file: str | None, context: int) -> list[str]:
        from wmtp.export.recipes import reading_recipe, training_files
        from wmtp.recipe import load_recipe

        files = training_files(self.src, self.recipe, staging)
        text = reading_recipe(
            self.recipe,
            self.role,
            to=self.to,
            out=self.out,
            tokenizer_file=tokenizer_file,
            adapters_apart=self.adapters_apart,
            context=context,
            dtype=self.dtype,
        )
        (staging / "recipe.toml").write_text(text)
        load_recipe(staging / "recipe.toml")  # loads back (a RecipeError here is a bug of ours)
        return [*files, "recipe.toml"]

    def write_card(self, model, staging: Path, files: list[str], tokenizer_files) -> list[str]:
        from wmtp.export.card import model_card
        from wmtp.export.recipes import card_facts

        written = [*files, "README.md", EXPORT.marker]
        facts = card_facts(self, model, written, tokenizer_files, staging / "recipe.toml")
        (staging / "README.md").write_text(model_card(facts))
        return ["README.md"]


__all__ = ["HEADS", "ExportResult", "export_model"]
