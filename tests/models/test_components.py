"""The registered model components, built from real recipe sections."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.models.builders import PARAMS, VOCAB, meta_state_dict
from wmtp import registry
from wmtp.errors import CheckpointError
from wmtp.models.backends import BACKENDS, NAMES
from wmtp.models.checkpoint import save_wmtp
from wmtp.models.lora import LoRALinear
from wmtp.recipe.specs.models import LlamaMTPSpec, MLPHeadSpec, ValueModelSpec


@pytest.fixture
def meta_dir(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    torch.save(meta_state_dict(PARAMS, VOCAB), tmp_path / "consolidated.pth")
    return tmp_path


def test_everything_registered():
    names = {(e.kind, e.name) for e in registry.entries() if e.module == "wmtp.models.components"}
    assert names == {
        ("model", "llama_mtp"),
        ("model", "value_model"),
        *(("value_head", n) for n in ("linear", "sigmoid", "mlp")),
    }
    attention = registry.entries("attention")
    assert [e.name for e in attention] == sorted(NAMES)  # the backend table, entry for entry
    assert all(e.obj is BACKENDS[e.name] and e.doc == BACKENDS[e.name].doc for e in attention)


def test_importing_components_does_not_import_torch():
    code = "import sys, wmtp.models.components; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fresh_policy_from_flavour_with_lora():
    spec = LlamaMTPSpec(
        flavour="tiny", dtype="float32", attention="sdpa", lora={"rank": 2, "targets": ["wq"]}
    )
    model = registry.get("model", "llama_mtp")(spec, vocab_size=50, trainable=True)
    assert model.args.vocab_size == 50 and model.n_heads == 2 and model.training
    assert isinstance(model.layers[0].attention.wq, LoRALinear)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    frozen = registry.get("model", "llama_mtp")(spec, vocab_size=50)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_policy_from_meta_path_then_wmtp_checkpoint(meta_dir, tmp_path):
    build = registry.get("model", "llama_mtp")
    spec = LlamaMTPSpec(path=str(meta_dir), dtype="float32", attention="eager")
    model = build(spec)
    assert model.n_heads == 3
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.toml").write_text("")  # a run directory (its recipe is not read here)
    save_wmtp(model, run / "checkpoints" / "step-20")
    save_wmtp(model, run / "checkpoints" / "step-3")
    again = build(
        LlamaMTPSpec(path=str(meta_dir), checkpoint=str(run), dtype="float32", attention="eager")
    )
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_recipe_sizes_that_disagree_with_the_checkpoint(meta_dir):
    spec = LlamaMTPSpec(path=str(meta_dir), dim=64, n_heads=4, dtype="float32")
    with pytest.raises(CheckpointError, match="dim = 32, but the recipe says 64"):
        registry.get("model", "llama_mtp")(spec)


def test_value_model_from_meta_path_with_mlp_head(meta_dir):
    spec = ValueModelSpec(
        path=str(meta_dir), dtype="float32", attention="sdpa", head=MLPHeadSpec(hidden=[6])
    )
    model = registry.get("model", "value_model")(spec)
    assert model.head_config["hidden"] == [6]
    assert model(torch.randint(0, VOCAB, (2, 4))).shape == (2, 4)


def test_value_head_builders():
    head = registry.get("value_head", "mlp")(MLPHeadSpec(hidden=[5], activation="silu"), 16)
    assert head.score(torch.randn(2, 3, 16)).shape == (2, 3)


def test_critic_with_lora_trains_adapters_and_its_head():
    spec = ValueModelSpec(flavour="tiny", dtype="float32", attention="sdpa", lora={"rank": 2})
    model = registry.get("model", "value_model")(spec, vocab_size=40, trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("head.")} == {"head.proj.weight", "head.proj.bias"}
    assert all(".lora_" in n for n in trainable if not n.startswith("head."))


def test_unresolved_vocab_is_a_clear_error():
    from wmtp.errors import ComponentError

    with pytest.raises(ComponentError, match="from the tokenizer"):
        registry.get("model", "llama_mtp")(LlamaMTPSpec(flavour="tiny", dtype="float32"))
