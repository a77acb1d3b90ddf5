"""Registered training pipelines (entry point ``wmtp.train.pipelines``).

``baseline``: uniform-weight MTP on the correct solutions. ``ntp``: the plain next-token baseline
(the policy with one head, same data). ``ref_tuning``: supervised tuning of the Rho-1 reference
model (one head: its next-token loss scores every target in ``rho1``), on the correct solutions.
The hooks a pipeline may override are documented in ``wmtp.train.pipeline``.
"""

from __future__ import annotations

from wmtp.registry import register
from wmtp.train.pipeline import Pipeline


@register("pipeline", "baseline")
class BaselinePipeline(Pipeline):
    """MTP fine-tuning with uniform token weights on correct solutions."""

    name = "baseline"
    correct_only = True


@register("pipeline", "ntp")
class NTPPipeline(BaselinePipeline):
    """Plain next-token fine-tuning (one head) on correct solutions: the NTP baseline."""

    name = "ntp"

    def n_future_tokens(self) -> int | None:
        return 1


@register("pipeline", "ref_tuning")
class RefTuningPipeline(NTPPipeline):
    """Tune the Rho-1 reference model: next-token SFT (n_future_tokens = 1) on correct solutions."""

    name = "ref_tuning"


__all__ = ["BaselinePipeline", "NTPPipeline", "Pipeline", "RefTuningPipeline"]

# The weighted pipelines (critic, verifiable, rho1) register themselves on import; imported last,
# since they build on the classes above.
from wmtp.train.pipelines import critic, rho1, verifiable  # noqa: E402, F401
