"""The text a model is shown for a benchmark problem: the problem's prompt as is, or in the
template the model's training rows were written in.

A model wmtp fine-tuned learned to answer rows laid out by ``data.template``
(``wmtp.data.examples.format_prompt``): with ``alpaca`` an instruction header, the problem as
the input, then ``### Response:``. Shown a bare HumanEval prompt it never saw that layout, and
its pass@k says little about what it learned. So by default (``evaluation.prompt_template =
"auto"``) a problem is shown as the evaluated run trained: its template, the benchmark's
instruction (HumanEval's is the built-in dataset's, the one its rows carry), the problem's
prompt as the input. A model with no wmtp training behind it (a Meta or Hugging Face
checkpoint) is shown the bare prompt, as HumanEval is scored for base models. Either way the
judge runs the problem's own prompt followed by the completion: the completion is the function
body in both layouts.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wmtp.data.examples import format_prompt
from wmtp.data.humaneval import INSTRUCTION as HUMANEVAL_INSTRUCTION


@dataclass(frozen=True)
class PromptFormat:
    """How problems are shown: ``template`` None for the bare prompt."""

    template: str | None
    instruction: str
    why: str
    """Where the choice came from, for the report."""

    def text(self, prompt: str) -> str:
        """The text the model continues for a problem whose prompt is ``prompt``."""
        if self.template is None:
            return prompt
        return format_prompt(self.instruction, prompt, self.template)  # type: ignore[arg-type]

    def describe(self) -> str:
        if self.template is None:
            return f"the benchmark's prompts as they are ({self.why})"
        return f"{self.template} template, instruction {self.instruction!r} ({self.why})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "instruction": self.instruction,
            "why": self.why,
            "description": self.describe(),
        }


def prompt_format(spec, trained_template: str | None) -> PromptFormat:
    """The format ``[evaluation]`` (``spec``) asks for; ``trained_template`` is the
    ``data.template`` of the run that trained the evaluated weights (None: not trained by wmtp).
    """
    instruction = HUMANEVAL_INSTRUCTION if spec.instruction is None else spec.instruction
    chosen = spec.prompt_template
    if chosen == "none":
        return PromptFormat(None, instruction, "evaluation.prompt_template = 'none'")
    if chosen != "auto":
        return PromptFormat(chosen, instruction, f"evaluation.prompt_template = {chosen!r}")
    if trained_template is None:
        return PromptFormat(None, instruction, "no wmtp training behind the weights")
    return PromptFormat(trained_template, instruction, "the template the model trained with")


__all__ = ["PromptFormat", "prompt_format"]
