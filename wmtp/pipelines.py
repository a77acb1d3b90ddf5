"""Every training pipeline described once, torch-free: what it needs, trains and logs.

A :class:`PipelineInfo` says which models a pipeline uses and which of them trains, the weighting
kinds it accepts, how many heads the trained model has, what one training example is (a
solution, or a correct/incorrect pair: two rows), what it logs (and which of its logs is a plain
cross-entropy), and where its implementation (the hooks of :mod:`wmtp.train.pipeline`) lives.
Everything else reads it: the recipe schema (the allowed ``experiment.pipeline`` values and the
rules between a pipeline and its models, weighting and data), ``wmtp validate`` and its memory
estimate, ``validate --data``, the trainer, ``wmtp list pipeline``, ``wmtp report`` and the docs. The registry holds the same objects (kind ``pipeline``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["policy", "reference", "critic"]
ROLES: tuple[Role, ...] = ("policy", "reference", "critic")
CRITIC_WEIGHTINGS = ("td", "random_matched", "shuffled")
"""Weighting kinds computed from a critic's values (``random_matched`` and ``shuffled`` are
controls drawn from the TD weights)."""


@dataclass(frozen=True)
class PipelineInfo:
    """One pipeline, as every part of wmtp sees it (see the module docstring)."""

    name: str
    doc: str
    uses: tuple[Role, ...]
    """Models the pipeline needs (``[model.<role>]`` sections)."""
    trains: Role | None
    """The model that trains; ``None`` for evaluation. The others it uses are frozen."""
    weightings: tuple[str, ...]
    """``weighting.kind`` values it accepts (``uniform``: no weighting); ``()``: it trains
    nothing, so any inherited weighting is accepted and unused (evaluation)."""
    heads: int | None = None
    """Heads of the trained model when the pipeline fixes them (1: next-token only)."""
    examples: Literal["solutions", "pairs", "none"] = "solutions"
    """A training example: one correct solution, or a (correct, incorrect) pair of one problem."""
    logs: tuple[str, ...] = ()
    """Metric families it logs beside loss, lr, grad_norm, tokens/s."""
    train_ce: str | None = None
    """The tag of head k's training loss with every target token weighted 1 (``{k}`` is the
    head): a cross-entropy in nats/token that ``wmtp report`` compares across pipelines. None
    when the pipeline trains no language model."""
    heldout_ce: str | None = None
    """The tag of head k's cross-entropy on the held-out split, every token weighted 1."""
    implementation: str | None = None
    """``module:Class`` of its hooks (a ``wmtp.train.pipeline.Pipeline``)."""

    @property
    def frozen(self) -> tuple[Role, ...]:
        """The models it uses without training them."""
        return tuple(role for role in self.uses if role != self.trains)

    @property
    def rows_per_example(self) -> int:
        """Sequences a model reads per example (2 for a pair)."""
        return 2 if self.examples == "pairs" else 1

    def facts(self) -> dict[str, str]:
        """What ``wmtp list pipeline`` shows of it."""
        heads = f"{self.heads} (fixed)" if self.heads else "model.policy.n_future_tokens"
        return {
            "models": ", ".join(
                f"{role} ({'trains' if role == self.trains else 'frozen'})" for role in self.uses
            ),
            "weighting.kind": " | ".join(self.weightings) or "any (unused)",
            "heads": heads if self.trains == "policy" else "-",
            "examples": self.examples,
        }

    def accepts(self, weighting: str) -> bool:
        return not self.weightings or weighting in self.weightings

    def load(self) -> type:
        """The implementation class (imports torch)."""
        assert self.implementation is not None, f"pipeline {self.name!r} does not train"
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)


_MTP_LOGS = ("loss/head{k}", "acc/head{k}", "tokens/head{k}", "eval/loss")
_HELDOUT_CE = "eval/loss/head{k}"  # the base hooks' eval_loss: uniform weights, every pipeline


def _policy_tuning(name: str, doc: str, *, heads: int | None = None) -> PipelineInfo:
    """A pipeline that tunes model.policy with uniform weights: the base hooks as they are."""
    return PipelineInfo(
        name,
        doc,
        uses=("policy",),
        trains="policy",
        weightings=("uniform",),
        heads=heads,
        logs=_MTP_LOGS,
        train_ce="loss/head{k}",
        heldout_ce=_HELDOUT_CE,
        implementation="wmtp.train.pipeline:Pipeline",
    )


PIPELINES: dict[str, PipelineInfo] = {
    p.name: p
    for p in (
        _policy_tuning(
            "baseline",
            "MTP fine-tuning of model.policy with uniform token weights on correct solutions.",
        ),
        _policy_tuning(
            "ntp",
            "Next-token fine-tuning of model.policy (one head) on correct solutions: the NTP "
            "baseline.",
            heads=1,
        ),
        _policy_tuning(
            "ref_tuning",
            "Tune the Rho-1 reference model: next-token fine-tuning (one head) of model.policy "
            "on correct solutions.",
            heads=1,
        ),
        PipelineInfo(
            "critic",
            "Train model.critic (a value model) to rank correct over incorrect solutions of "
            "one problem.",
            uses=("critic",),
            trains="critic",
            weightings=("uniform",),
            examples="pairs",
            logs=("train/pair_accuracy", "train/pair_margin", "heldout/pair_accuracy"),
            implementation="wmtp.train.pipelines.critic:CriticPipeline",
        ),
        PipelineInfo(
            "verifiable",
            "MTP on correct solutions, each target token weighted by the frozen critic's TD/GAE "
            "advantage.",
            uses=("policy", "critic"),
            trains="policy",
            weightings=CRITIC_WEIGHTINGS,
            logs=(*_MTP_LOGS, "weight/*", "loss/head{k}_weighted", "loss/head{k}_unweighted"),
            train_ce="loss/head{k}_unweighted",
            heldout_ce=_HELDOUT_CE,
            implementation="wmtp.train.pipelines.verifiable:VerifiablePipeline",
        ),
        PipelineInfo(
            "rho1",
            "MTP on correct solutions, keeping per head the top k% tokens by excess loss over "
            "the frozen reference.",
            uses=("policy", "reference"),
            trains="policy",
            weightings=("rho1",),
            logs=(*_MTP_LOGS, "rho1/kept_fraction_head{k}", "loss/head{k}_all_tokens"),
            train_ce="loss/head{k}_all_tokens",
            heldout_ce=_HELDOUT_CE,
            implementation="wmtp.train.pipelines.rho1:Rho1Pipeline",
        ),
        PipelineInfo(
            "evaluation",
            "pass@k of model.policy on the [evaluation] benchmarks (what `wmtp eval` does).",
            uses=("policy",),
            trains=None,
            weightings=(),
            examples="none",
            logs=("pass@k",),
        ),
    )
}
"""The built-in pipelines by name (``experiment.pipeline``)."""

NAMES: tuple[str, ...] = tuple(PIPELINES)


def pipeline_info(name: str) -> PipelineInfo:
    """The pipeline ``name`` (a registered plugin's too); a ComponentError if none has it."""
    if name in PIPELINES:
        return PIPELINES[name]
    from wmtp import registry

    found: Any = registry.get("pipeline", name)
    return found


def register_builtin() -> None:
    """Put every built-in pipeline in the registry (``wmtp list pipeline``)."""
    from wmtp.registry import register

    for info in PIPELINES.values():
        register("pipeline", info.name)(info)


register_builtin()

__all__ = [
    "CRITIC_WEIGHTINGS",
    "NAMES",
    "PIPELINES",
    "ROLES",
    "PipelineInfo",
    "Role",
    "pipeline_info",
]
