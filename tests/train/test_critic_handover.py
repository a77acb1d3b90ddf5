"""What the verifiable run loads from ``model.critic.checkpoint`` against what the critic run
saved: the weights (trunk and head), in the loading section's dtype, and the value head the
critic trained with. A section that would compute other values from the same weights (another
head kind or activation) is refused before any step: exit 2, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.train.test_critic_objective import _recipe_text
from wmtp.cli import app

runner = CliRunner()

SAVED_HEAD = '{ kind = "mlp", activation = "silu" }'


@pytest.fixture(scope="module")
def critic_run(tmp_path_factory) -> Path:
    """One step of the critic recipe (an MLP head with SiLU, fp32), through the CLI."""
    tmp = tmp_path_factory.mktemp("critic")
    recipe = tmp / "critic.toml"
    recipe.write_text(_recipe_text(tmp, SAVED_HEAD, micro=4, accum=1))
    result = runner.invoke(app, ["run", str(recipe), "--set", "training.max_steps=1"])
    assert result.exit_code == 0, result.output
    return tmp


def _verifiable(tmp: Path, head: str, dtype: str = "float32") -> Path:
    """The verifiable recipe over the critic run's data, its critic from ``runs/critic/latest``."""
    critic = _recipe_text(tmp, head, micro=2, accum=1)
    data = critic[critic.index("[data]") :].replace("pairs = ", "# pairs = ")
    critic_section = critic[critic.index("[model.critic]") : critic.index("[parallel]")]
    critic_section = critic_section.replace('dtype = "float32"', f'dtype = "{dtype}"')
    text = f"""
[experiment]
name = "verifiable"
pipeline = "verifiable"
seed = 0
runs_dir = "{tmp / "runs"}"
[tokenizer]
kind = "byte"
[model.policy]
kind = "llama_mtp"
flavour = "tiny"
dim = 32
n_layers = 4
n_heads = 2
n_kv_heads = 1
max_seq_len = 256
dtype = "float32"
attention = "eager"
n_future_tokens = 2
{critic_section}checkpoint = "{tmp / "runs" / "critic" / "latest"}"
[weighting]
kind = "td"
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = 2
max_steps = 1
eval_every = 0
{data}"""
    path = tmp / f"verifiable_{abs(hash((head, dtype)))}.toml"
    path.write_text(text)
    return path


def test_the_frozen_critic_holds_the_saved_weights_and_head(critic_run):
    """Every saved tensor (trunk, final norm, MLP head) is the frozen critic's, cast to the
    loading section's bfloat16; the head is the MLP with SiLU the critic trained."""
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    path = _verifiable(critic_run, SAVED_HEAD, dtype="bfloat16")
    recipe = load_recipe(path).recipe
    trainer = Trainer(recipe, path.read_text(), critic_run / "v", init_distributed("cpu"))
    critic = trainer.build().frozen["critic"]
    (saved_file,) = (critic_run / "runs" / "critic" / "latest").glob("checkpoints/*/model.*")
    saved = load_file(str(saved_file))
    state = critic.state_dict()
    assert state.keys() == saved.keys()
    for name, tensor in saved.items():
        assert state[name].dtype == torch.bfloat16, name
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
    assert [type(m).__name__ for m in critic.head.mlp] == [
        "Linear", "SiLU", "Linear", "SiLU", "Linear",
    ]  # fmt: skip
    assert not critic.training and not any(p.requires_grad for p in critic.parameters())


@pytest.mark.parametrize(
    "head",
    [
        '{ kind = "mlp", activation = "gelu" }',  # same tensors, other values
        '{ kind = "mlp", activation = "relu" }',
        '{ kind = "mlp", activation = "silu", hidden = [16, 8] }',  # other shapes
        '{ kind = "linear" }',
        '{ kind = "sigmoid" }',
    ],
)
def test_a_critic_head_other_than_the_trained_one_is_refused(critic_run, head):
    """Refused before any step, exit 2, naming the key and the head the critic trained with."""
    result = runner.invoke(app, ["run", str(_verifiable(critic_run, head))])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "model.critic.head" in flat and "'silu'" in flat and "Traceback" not in flat
