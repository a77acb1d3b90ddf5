"""Real training runs of every pipeline in seconds: a tiny model, a tiny JSONL dataset, CPU."""

from __future__ import annotations

import json
from pathlib import Path

from wmtp.train.runner import run_recipe

MODEL = """
kind = "{kind}"
flavour = "tiny"
dim = 32
n_layers = {layers}
n_heads = 2
n_kv_heads = 1
max_seq_len = 128
dtype = "float32"
attention = "sdpa"
"""


def write_dataset(path: Path, n_problems: int = 10) -> Path:
    """Problems named by HumanEval task ids, two correct and one incorrect solution each."""
    rows = []
    for p in range(n_problems):
        for output, ok in (("    return 1\n", True), ("    return  1\n", True), ("", False)):
            rows.append(
                {
                    "instruction": f"Problem {p}.",
                    "output": output,
                    "problem_id": f"HumanEval/{p}",
                    "is_correct": ok,
                }
            )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def policy(heads: int = 2) -> str:
    return (
        "[model.policy]"
        + MODEL.format(kind="llama_mtp", layers=2 + heads)
        + (f"n_future_tokens = {heads}\n")
    )


def critic(checkpoint: Path | None = None) -> str:
    section = "[model.critic]" + MODEL.format(kind="value_model", layers=2)
    return section + (f'checkpoint = "{checkpoint}"\n' if checkpoint else "")


def reference(checkpoint: Path) -> str:
    section = "[model.reference]" + MODEL.format(kind="llama_mtp", layers=4)
    return section + f'n_future_tokens = 1\ncheckpoint = "{checkpoint}"\n'


def recipe(
    tmp_path: Path,
    name: str,
    pipeline: str,
    body: str,
    *,
    seed: int = 0,
    steps: int = 1,
    micro_batch_size: int = 2,
):
    """A recipe file for ``pipeline`` on the tiny dataset; ``body`` adds its models (and more)."""
    data = tmp_path / "train.jsonl"
    if not data.is_file():
        write_dataset(data)
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[experiment]
name = "{name}"
pipeline = "{pipeline}"
seed = {seed}
runs_dir = "{tmp_path / "runs"}"

[tokenizer]
kind = "byte"

[parallel]
device = "cpu"

[training]
micro_batch_size = {micro_batch_size}
max_steps = {steps}
log_every = 1
eval_every = 1
checkpoint_every = 1
schedule = {{ kind = "cosine", warmup_steps = 1 }}

[data]
kind = "jsonl"
path = "{data}"
max_length = 128
template = "plain"
split = {{ heldout_fraction = 0.3 }}
pairs = {{ length_bins = [128] }}

[evaluation]
benchmarks = ["humaneval"]
k = [1, 2]
n_samples = 2
temperature = 0.8
max_new_tokens = 6
max_problems = 3
workers = 2

{body}
"""
    )
    return path


def train(tmp_path: Path, name: str, pipeline: str, body: str, **kw) -> Path:
    """Train the recipe; its run directory."""
    return run_recipe(recipe(tmp_path, name, pipeline, body, **kw), console=False).run_dir
