"""More of a user's checkpoint through the builder ``wmtp run`` calls: the heads a Meta
``params.json`` claims against its weights, a Hugging Face config in transformers 4's layout
(the one most checkpoints on disk have) with packed documents and position offsets, and the
config values wmtp cannot honour. Tolerances as in ``test_checkpoint_paths``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.models.builders import VOCAB, tiny_hf_llama
from tests.models.test_checkpoint_paths import TOL, build, meta_weights, write_meta
from wmtp.errors import CheckpointError
from wmtp.models.seq import SeqInfo

transformers = pytest.importorskip("transformers")

MTP3 = {  # Meta's multi-token layout, 3 heads: layers.0..2 (trunk 0..1, head 1), extra_heads.0..1
    "dim": 32,
    "n_layers": 5,
    "n_heads": 4,
    "vocab_size": -1,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "n_future_tokens": 3,
}


@pytest.mark.parametrize(
    "claimed, says",
    [(None, "no n_future_tokens (one head)"), (2, "n_future_tokens = 2")],
    ids=["absent", "too_few"],
)
def test_params_json_heads_must_match_the_weights(tmp_path, claimed, says):
    """Meta's release names heads 2..n ``extra_heads``; a params.json that disagrees with them is
    refused at params.json with the count the weights hold, not as a list of layer keys."""
    params = {k: v for k, v in MTP3.items() if k != "n_future_tokens"}
    if claimed is not None:
        params["n_future_tokens"] = claimed
    write_meta(tmp_path, params, meta_weights(MTP3))
    with pytest.raises(CheckpointError) as err:
        build(tmp_path)
    message = str(err.value)
    assert f"params.json: {says}" in message, message
    assert "extra_heads.0..1, the layout of n_future_tokens = 3" in message, message


def legacy_llama3_dir(directory):
    """A tiny Llama with Llama-3 RoPE scaling whose config.json is in transformers 4's layout
    (``rope_theta`` at the top, ``rope_scaling`` beside it), as Llama 3.x checkpoints ship."""
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,  # small: the scaling matters at 50 tokens
    }
    tiny_hf_llama(rope_parameters=dict(rope, rope_theta=500.0)).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters")
    config |= {"rope_theta": 500.0, "rope_scaling": rope}
    (directory / "config.json").write_text(json.dumps(config))
    hf = transformers.LlamaForCausalLM.from_pretrained(directory).eval()
    assert hf.config.rope_parameters["rope_type"] == "llama3"  # transformers read it back
    return hf


@pytest.mark.parametrize("attention", ["eager", "sdpa", "flex"])
def test_packed_documents_and_position_ids_give_transformers_logits(tmp_path, attention):
    """Documents packed in one row (attention within each, positions restarting) give each
    document's own logits; positions with gaps (RoPE sees only their differences, so a plain
    offset would prove nothing) give transformers' logits at those positions."""
    hf = legacy_llama3_dir(tmp_path)
    model = build(tmp_path, attention=attention, n_future_tokens=1)
    first, second = torch.randint(0, VOCAB, (1, 30)), torch.randint(0, VOCAB, (1, 20))
    gaps_BS = torch.randperm(100)[:20].sort().values[None]
    with torch.no_grad():
        packed = model(torch.cat([first, second], 1), SeqInfo.packed([[30, 20]]))[:, :, 0]
        torch.testing.assert_close(packed[:, :30], hf(first).logits, **TOL)
        torch.testing.assert_close(packed[:, 30:], hf(second).logits, **TOL)
        spread = model(second, SeqInfo(position_ids=gaps_BS))[:, :, 0]
        torch.testing.assert_close(spread, hf(second, position_ids=gaps_BS).logits, **TOL)
        assert not torch.allclose(spread, packed[:, 30:], **TOL)  # the positions are applied
        model.args = dataclasses.replace(model.args, rope_scaling=None)  # and the scaling is
        assert not torch.allclose(model(first)[:, :, 0], packed[:, :30], **TOL)


@pytest.mark.parametrize(
    "config, why",
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "linear"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            "dynamic",
        ),
        ({"attention_dropout": 0.1}, "attention_dropout = 0.1"),
    ],
    ids=["linear_rope", "dynamic_rope", "attention_dropout"],
)
def test_hf_config_values_wmtp_cannot_honour_are_refused_at_config_json(tmp_path, config, why):
    tiny_hf_llama(**config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{why}.* not supported"):
        build(tmp_path, n_future_tokens=1)


def test_a_config_json_without_a_size_names_the_key(tmp_path):
    tiny_hf_llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: 'intermediate_size' is missing$"):
        build(tmp_path, n_future_tokens=1)


def test_a_stated_context_replaces_the_checkpoints(tmp_path):
    """``max_seq_len`` set in the recipe over ``path`` is the context generation may fill (the
    tiny HF checkpoint says 512 positions); unset, the checkpoint's own."""
    from tests.models.test_checkpoint_paths import build

    tiny_hf_llama(vocab_size=VOCAB).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert build(tmp_path).args.max_seq_len == config["max_position_embeddings"]
    assert build(tmp_path, max_seq_len=1024).args.max_seq_len == 1024


@pytest.mark.parametrize(
    "stated, says",
    [
        ({"rope_theta": 1e6}, "rope_theta = 10000.0, but the recipe says 1000000.0"),
        ({"norm_eps": 1e-6}, "norm_eps = 1e-05, but the recipe says 1e-06"),
        ({"rope_scaling": {"factor": 8.0}}, "rope_scaling = None, but the recipe says {'factor'"),
    ],
    ids=["rope_theta", "norm_eps", "rope_scaling"],
)
def test_numerics_the_recipe_sets_over_a_checkpoint_must_be_its_own(tmp_path, stated, says):
    """RoPE and norm numerics the recipe sets itself over ``path`` were silently the
    checkpoint's; now one that differs is refused, naming both values. The same value is taken."""
    from tests.models.test_checkpoint_paths import build

    tiny_hf_llama(vocab_size=VOCAB).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as err:
        build(tmp_path, **stated)
    assert f"checkpoint {tmp_path}: {says}" in str(err.value), str(err.value)
    assert build(tmp_path, rope_theta=10000.0, norm_eps=1e-5).args.rope_theta == 10000.0


def test_wmtp_run_refuses_a_stated_rope_theta_the_checkpoint_lacks_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.models.test_checkpoint_paths import RECIPE
    from tests.train.train_helpers import REPO

    tiny_hf_llama(vocab_size=300).save_pretrained(tmp_path / "model")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(path=tmp_path / "model"))
    sets = ["--set", f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    sets += ["--set", "model.policy.rope_theta=500000.0"]
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(recipe), *sets, "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "rope_theta = 10000.0, but the recipe says 500000.0" in " ".join(done.stderr.split())
