"""The model card (``README.md``) of every export: YAML front matter the Hugging Face Hub and
other tools read, then what the model is, how to use it, how it was trained (recipe, fingerprint,
steps, tokens) and how it scored (the latest ``wmtp eval`` of that checkpoint)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from wmtp.export.run_info import EvalResult, TrainingSummary
from wmtp.export.tokenizer_files import TokenizerFiles

FORMAT_NAMES = {
    "hf": "Hugging Face transformers (`LlamaForCausalLM`)",
    "meta": "Meta's multi-token-prediction layout (`params.json` + `consolidated.pth`)",
    "wmtp": "wmtp's own format (`model.safetensors` + `wmtp_model.json`)",
}
ADAPTERS_ONLY = "wmtp's format, its LoRA adapters alone (`lora.safetensors` + `lora.json`)"
"""The format of a ``--to wmtp --no-merge-lora`` export: no base weights."""


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by the export."""

    title: str
    to: str
    out: str
    """The export directory as the user named it (the card's commands use it)."""
    kind: str
    """``llama_mtp`` or ``value_model``."""
    heads_exported: int
    heads_trained: int
    dtype: str
    parameters: int
    source: str
    pipeline: str
    trained_by_wmtp: bool
    """Whether the source's recipe trains the model (a training pipeline, not ``evaluation``)."""
    lora: str | None
    """How LoRA adapters were exported (``merged into the weights``, ``kept apart``), or
    ``None``."""
    base: str | None
    """With the adapters kept apart: the base model they apply to (``model.<role>.path`` of the
    export's ``recipe.toml``), which the folder needs and does not hold."""
    model_section: str
    """The ``[model.<role>]`` section of the export's ``recipe.toml`` (it reads the folder)."""
    files: list[str]
    tokenizer: TokenizerFiles
    training: TrainingSummary | None
    results: list[EvalResult]
    fingerprint: dict | None
    sizes: dict = field(default_factory=dict)


def model_card(f: CardFacts) -> str:
    """The card's markdown."""
    value_model = f.kind == "value_model"
    tokenizer = f.tokenizer.note + ("" if value_model else f.tokenizer.decoding)
    parts = [
        _front_matter(f),
        f"# {f.title}\n\n{_summary(f)}",
        "## Use it\n\n" + (_critic_usage(f) if value_model else _usage(f)),
        "## Tokenizer\n\n" + tokenizer,
        "## Training\n\n" + _training(f),
        "## Evaluation\n\n" + (CRITIC_EVALUATION if value_model else _evaluation(f.results)),
        "## Files\n\n" + "\n".join(f"- `{name}`" for name in sorted(set(f.files))),
    ]
    return "\n\n".join(parts) + "\n"


def _front_matter(f: CardFacts) -> str:
    lines = ["---"]
    if f.to == "hf":
        lines.append("library_name: transformers")
    if f.kind != "value_model":  # a value model generates nothing
        lines.append("pipeline_tag: text-generation")
    tags = ["wmtp", "llama", "code"] + (["multi-token-prediction"] if f.heads_trained > 1 else [])
    tags += ["value-model"] if f.kind == "value_model" else []
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    return "\n".join([*lines, "---"])


def _summary(f: CardFacts) -> str:
    heads = (
        f"{f.heads_exported} prediction heads (head k predicts token t+k)"
        if f.heads_exported > 1
        else "its next-token head"
        + (f" (of the {f.heads_trained} it trained)" if f.heads_trained > 1 else "")
    )
    what = (
        "A value model (critic), a LLaMA trunk with a value head (one value per token)"
        if f.kind == "value_model"
        else f"A LLaMA model with {heads}"
    )
    lora = f" LoRA adapters: {f.lora}." if f.lora else ""
    if f.base:
        lora = (
            f" LoRA adapters: kept apart, over the base model `{f.base}` (`model.policy.path` "
            "in `recipe.toml`), which this folder needs and does not hold."
        )
    sizes = ", ".join(f"{k} {v}" for k, v in f.sizes.items())
    origin = (
        f"trained with wmtp (pipeline `{f.pipeline}`) and exported from `{f.source}`"
        if f.trained_by_wmtp
        else f"exported by wmtp from `{f.source}`, which wmtp did not train,"
    )
    return (
        f"{what}, {origin} in {ADAPTERS_ONLY if f.base else FORMAT_NAMES[f.to]}, {f.dtype}, "
        f"{f.parameters:,} parameters "
        f"({sizes}).{lora}"
    )


def _usage(f: CardFacts) -> str:
    reads = (
        f"`recipe.toml` here reads the adapters in this folder over the base model `{f.base}`, "
        "which must be there; if it moves, give its new path as `model.policy.path` in "
        "`recipe.toml`"
        if f.base
        else "`recipe.toml` here names this folder and its tokenizer"
    )
    wmtp = (
        f"With wmtp ({reads}):\n\n"
        f"```bash\nwmtp eval {f.out}\nwmtp bench decode --checkpoint {f.out}\n```"
    )
    if f.to != "hf":
        return wmtp
    snippet = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{f.out}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{f.out}")\n'
        'ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids\n'
        "out = model.generate(ids, max_new_tokens=64, do_sample=False)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))"
    )
    heads = ""
    if f.heads_exported > 1:
        heads = (
            "\n\nHeads 2..n are in `mtp_heads.safetensors`, described by `mtp_heads.json` (which "
            "layer each is, what it reads): wmtp loads them with the model, so self-speculative "
            "decoding (`evaluation.speculative = true`) works from this folder."
        )
    return f"```python\n{snippet}\n```{heads}\n\n{wmtp}"


def _critic_usage(f: CardFacts) -> str:
    return (
        "A value model scores text (one value per token: how likely the solution so far is to "
        "be correct) and generates nothing, so `wmtp eval` and `wmtp bench decode`, which run a "
        "policy's generations, do not take it. In wmtp it is the frozen critic of a "
        "`verifiable` recipe (its values give the TD/GAE advantages that weight the policy's "
        "tokens), or the starting weights of another `critic` run. The `[model.critic]` "
        "section of `recipe.toml` here reads this folder; use it in place of that recipe's "
        "own (with no `checkpoint` or `flavour`: the trained weights and sizes are this "
        f"folder's):\n\n```toml\n{f.model_section.strip()}\n```\n\n"
        "Then `wmtp validate --env RECIPE` checks that it loads."
    )


CRITIC_EVALUATION = (
    "`wmtp eval` scores a policy's generations; a value model has none. Its run's "
    "`metrics.jsonl` logs how often it ranks the correct solution of a pair above the incorrect "
    "one (`wmtp report` of the run plots it in `critic.png`)."
)


def _training(f: CardFacts) -> str:
    lines = []
    t = f.training
    if t is not None:
        lines.append(f"- steps: {t.steps}")
        if t.tokens is not None:
            how = "" if t.tokens_exact else f" (estimated from {t.logged_steps} logged steps)"
            lines.append(f"- input tokens: {t.tokens:,}{how}")
    what = (
        "the resolved recipe that trained it"
        if f.trained_by_wmtp
        else f"the recipe that describes it; pipeline `{f.pipeline}` trains nothing"
    )
    lines.append(
        f"- recipe: [`training_recipe.toml`](training_recipe.toml) ({what}); "
        "[`recipe.toml`](recipe.toml) is the same recipe reading this folder"
    )
    text = "\n".join(lines)
    if f.fingerprint:
        text += "\n\nFingerprint (`fingerprint.json`):\n\n```json\n"
        text += json.dumps(f.fingerprint, indent=2) + "\n```"
    return text


def _evaluation(results: list[EvalResult]) -> str:
    if not results:
        return "No `wmtp eval` results for this checkpoint yet (`wmtp eval` writes them)."
    ks = sorted(
        {k for r in results for k in r.pass_at_k}, key=lambda k: int(k) if k.isdigit() else 0
    )
    header = "| benchmark | " + " | ".join(f"pass@{k}" for k in ks) + " | details |"
    rows = [header, "|" + "---|" * (len(ks) + 2)]
    for r in results:
        cells = [_percent(r.pass_at_k.get(k)) for k in ks]
        details = ", ".join(f"{k} {v}" for k, v in r.details.items())
        rows.append(f"| {r.benchmark} | " + " | ".join(cells) + f" | {details} |")
    return "Latest `wmtp eval` of this checkpoint:\n\n" + "\n".join(rows)


def _percent(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"


__all__ = ["CardFacts", "model_card"]
