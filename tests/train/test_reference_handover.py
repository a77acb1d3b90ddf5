"""ref_tuning -> rho1 (and critic -> verifiable): the frozen model a run loads is the one the run
before it saved. The recipes as written name the run directory the first recipe writes, and
describe the model it trained; a real ref_tuning run's LoRA adapters, over the base it trained
on, with the one head it trained, are what the rho1 trainer scores with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.train_helpers import REPO
from wmtp.pipelines import PIPELINES

CHAINS = [
    ("critic", "verifiable", "critic"),
    ("ref_tuning", "rho1", "reference"),
    ("tiny_critic", "tiny_verifiable", "critic"),
    ("tiny_ref_tuning", "tiny_rho1", "reference"),
]
"""(recipe that trains, recipe that loads its run, the role it loads it as)."""

LORA = '{ rank = 4, alpha = 8.0, targets = ["wq", "wv", "w2"] }'


def _trained_description(section: dict, heads: int | None) -> dict:
    """What a model section says about the weights, minus what only the loading run chooses
    (where the trained weights are, the compute dtype and attention, LoRA dropout)."""
    out = {k: v for k, v in section.items() if k not in ("checkpoint", "dtype", "attention")}
    if out.get("lora"):
        out["lora"] = {k: v for k, v in out["lora"].items() if k != "dropout"}
    if "n_future_tokens" in out:  # a value model has one output per token
        out["n_future_tokens"] = heads or out["n_future_tokens"]
    return out


@pytest.mark.parametrize(("producer", "consumer", "role"), CHAINS)
def test_a_recipe_loads_the_run_and_the_model_of_the_recipe_before_it(producer, consumer, role):
    from wmtp.recipe import load_recipe

    made = load_recipe(REPO / "recipes" / f"{producer}.toml").recipe
    using = load_recipe(REPO / "recipes" / f"{consumer}.toml").recipe
    trained = PIPELINES[made.experiment.pipeline]
    assert trained.trains is not None
    loaded = getattr(using.model, role)
    latest = Path(made.experiment.runs_dir) / made.experiment.name / "latest"
    assert Path(loaded.checkpoint) == latest
    want = _trained_description(getattr(made.model, trained.trains).model_dump(), trained.heads)
    assert _trained_description(loaded.model_dump(), None) == want


# --- a real ref_tuning run, loaded by a rho1 trainer ---------------------------------------------


def _base_model(directory: Path) -> Path:
    """A tiny 2-head MTP model in wmtp's format: the pretrained ``path`` both recipes name."""
    from wmtp.models.args import ModelArgs
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(7)
    args = ModelArgs(
        dim=32, n_layers=4, n_heads=2, n_kv_heads=1, vocab_size=259, max_seq_len=256,
        n_future_tokens=2,
    )  # fmt: skip
    return save_wmtp(LlamaMTP(args, attention="eager").float(), directory / "base")


def _recipe(tmp: Path, pipeline: str, models: str) -> Path:
    from tests.train.test_critic_objective import _write_data

    text = f"""
[experiment]
name = "{pipeline}"
pipeline = "{pipeline}"
seed = 0
runs_dir = "{tmp / "runs"}"
[tokenizer]
kind = "byte"
{models}
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = 2
max_steps = 2
lr = 0.05
eval_every = 0
[data]
kind = "jsonl"
path = "{_write_data(tmp)}"
max_length = 256
split = {{ heldout_fraction = 0.0 }}
"""
    path = tmp / f"{pipeline}.toml"
    path.write_text(text)
    return path


def _section(role: str, base: Path, heads: int, lora: str = LORA, checkpoint: str = "") -> str:
    lines = [
        f"[model.{role}]",
        'kind = "llama_mtp"',
        f'path = "{base}"',
        'dtype = "float32"',
        'attention = "eager"',
        f"n_future_tokens = {heads}",
        f"lora = {lora}",
    ]
    return "\n".join(lines + ([f'checkpoint = "{checkpoint}"'] if checkpoint else [])) + "\n"


@pytest.fixture(scope="module")
def ref_tuning_run(tmp_path_factory) -> tuple[Path, Path]:
    """(its directory, the base model): two steps of LoRA next-token tuning of the base."""
    from wmtp.train.runner import run_recipe

    tmp = tmp_path_factory.mktemp("ref_tuning")
    base = _base_model(tmp)
    recipe = _recipe(tmp, "ref_tuning", _section("policy", base, heads=2))
    run_recipe(recipe, console=False)
    return tmp, base


def _rho1_recipe(tmp: Path, base: Path, lora: str = LORA, reference_heads: int = 1) -> Path:
    latest = tmp / "runs" / "ref_tuning" / "latest"
    models = _section("policy", base, heads=2)
    models += _section("reference", base, reference_heads, lora=lora, checkpoint=str(latest))
    models += '[weighting]\nkind = "rho1"\nk_percent = 0.6\n'
    return _recipe(tmp, "rho1", models)


def _rho1_trainer(tmp: Path, base: Path, lora: str = LORA, reference_heads: int = 1):
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    path = _rho1_recipe(tmp, base, lora, reference_heads)
    recipe = load_recipe(path).recipe
    return Trainer(
        recipe, path.read_text(), tmp / "rho1_run", init_distributed("cpu"), console=False
    )


def test_rho1_scores_with_the_adapters_ref_tuning_saved_over_its_base(ref_tuning_run):
    tmp, base = ref_tuning_run
    (step,) = (tmp / "runs" / "ref_tuning" / "latest" / "checkpoints").glob("step-*")
    saved = load_file(str(step / "lora.safetensors"))
    assert saved and any(bool(t.abs().sum()) for k, t in saved.items() if "lora_B" in k)
    reference = _rho1_trainer(tmp, base).build().frozen["reference"]
    state = reference.state_dict()
    for name, tensor in saved.items():  # the trained adapters
        assert torch.equal(state[name], tensor), name
    assert reference.n_heads == 1  # the head ref_tuning trained: the base's head 1
    base_state = load_file(str(base / "model.safetensors"))
    frozen_base = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}
    for name, tensor in frozen_base.items():
        assert torch.equal(tensor, base_state[name]), name
    assert json.loads((base / "wmtp_model.json").read_text())["args"]["n_future_tokens"] == 2


def test_a_reference_whose_lora_scales_the_adapters_otherwise_is_refused(ref_tuning_run):
    from wmtp.errors import CheckpointError

    tmp, base = ref_tuning_run
    other = LORA.replace("alpha = 8.0", "alpha = 2.0")
    with pytest.raises(CheckpointError, match=r"model\.reference\.lora"):
        _rho1_trainer(tmp, base, lora=other).build()


def test_a_reference_asked_for_heads_ref_tuning_never_trained_is_refused(ref_tuning_run):
    """The policy's 2 heads asked of a reference whose run trained one: heads 2..n would be
    untrained copies of head 1, scoring head k's targets with next-token weights. ``validate``
    and ``run`` say so at the key (exit 2, no traceback); the trainer's build refuses too."""
    import subprocess
    import sys

    from wmtp.errors import CheckpointError

    tmp, base = ref_tuning_run
    recipe = _rho1_recipe(tmp, base, reference_heads=2)
    line = recipe.read_text().splitlines().index("n_future_tokens = 2", 20) + 1
    for command in (["validate"], ["run", "--dry-run"]):
        done = subprocess.run(
            [sys.executable, "-m", "wmtp.cli", *command, str(recipe)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        shown = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 2 and "Traceback" not in shown, shown[-2000:]
        assert f"rho1.toml:{line}:1: model.reference.n_future_tokens: 2 heads asked" in shown
        assert "hold 1 head: a frozen model's head 2 would be an untrained copy of head" in shown
        assert "(set model.reference.n_future_tokens = 1)" in shown
    with pytest.raises(CheckpointError, match=r"head 2 would be an untrained copy"):
        _rho1_trainer(tmp, base, reference_heads=2).build()
