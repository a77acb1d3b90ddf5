"""``wmtp export --to meta`` (Meta's multi-token layout) and ``--to wmtp``, and what Meta's
layout refuses to hold: a value model, RoPE scaling its params.json cannot say."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tests.export.export_helpers import export, logits, wmtp_model
from wmtp.cli import app


def test_meta_layout_is_the_inverse_of_the_meta_reader(tiny_run, tmp_path):
    out = tmp_path / "tiny-meta"
    result = export(tiny_run, "--to", "meta", "--out", out)
    assert result.exit_code == 0, result.output
    params = json.loads((out / "params.json").read_text())
    assert params["n_future_tokens"] == 2 and params["n_layers"] == 4
    assert "ffn_dim" not in params and "rope_scaling" not in params  # multiple_of says the width
    sd = torch.load(out / "consolidated.pth", weights_only=True)
    assert {k.split(".")[0] for k in sd} == {
        "tok_embeddings",
        "layers",
        "extra_heads",
        "norm",
        "output",
    }
    assert {int(k.split(".")[1]) for k in sd if k.startswith("layers.")} == {
        0,
        1,
        2,
    }  # trunk + head 1
    assert {k.split(".")[1] for k in sd if k.startswith("extra_heads.")} == {"0"}
    exported, trained = wmtp_model(out), wmtp_model(tiny_run)
    assert torch.equal(logits(exported), logits(trained))
    # params.json cannot hold the context: the export's recipe does, so eval fills the same one
    assert exported.args.max_seq_len == trained.args.max_seq_len == 1024
    hf = tmp_path / "tiny-meta-hf"  # and an export of the export keeps it
    assert export(out, "--to", "hf", "--out", hf).exit_code == 0
    assert json.loads((hf / "config.json").read_text())["max_position_embeddings"] == 1024


def test_one_head_meta_and_wmtp_exports(tiny_run, tmp_path):
    from wmtp.models.checkpoint import from_pretrained

    trained = logits(wmtp_model(tiny_run))
    for to in ("meta", "wmtp"):
        out = tmp_path / to
        assert export(tiny_run, "--to", to, "--out", out, "--heads", "1").exit_code == 0
        back = from_pretrained(out, dtype="float32", attention="sdpa")
        assert back.n_heads == 1 and torch.equal(logits(back), trained[:, :, :1])
    out = tmp_path / "wmtp-all"
    assert export(tiny_run, "--to", "wmtp", "--out", out).exit_code == 0
    assert torch.equal(logits(wmtp_model(out)), trained)


def critic(recipe_dir, weights):
    """The critic of ``recipe_dir``'s recipe holding ``weights``, built as every caller does."""
    from wmtp import assembly
    from wmtp.recipe import load_recipe

    recipe = load_recipe(recipe_dir / "recipe.toml").recipe
    tokenizer = assembly.tokenizer(recipe)
    return assembly.trained_model(recipe, "critic", weights, tokenizer=tokenizer, device="cpu")


def test_a_value_model_exports_to_wmtp_only(critic_run, tmp_path):
    from wmtp.models.value import ValueModel

    for to, held in (("meta", "Meta's params.json layout"), ("hf", "LlamaForCausalLM")):
        result = export(critic_run, "--to", to, "--out", tmp_path / to)
        assert result.exit_code == 2, result.output
        assert "value model" in result.flat and held in result.flat and "--to wmtp" in result.flat
        assert not (tmp_path / to).exists()
    out = tmp_path / "critic"
    result = export(critic_run, "--to", "wmtp", "--out", out)
    assert result.exit_code == 0, result.output
    tokens = torch.tensor([[256, *b"def f(x): return x"]])
    exported, trained = critic(out, out), critic(critic_run, critic_run / "checkpoints" / "step-3")
    assert isinstance(exported, ValueModel)
    weights, trained_weights = exported.state_dict(), trained.state_dict()
    assert weights.keys() == trained_weights.keys()
    assert all(torch.equal(w, trained_weights[name]) for name, w in weights.items())
    with torch.no_grad():  # the same weights; the CPU's kernels may round a last bit otherwise
        torch.testing.assert_close(exported(tokens), trained(tokens), rtol=0, atol=1e-6)
    assert "A value model (critic)" in (out / "README.md").read_text()
    for target in (critic_run, out, critic_run / "checkpoints" / "step-3"):  # nothing to generate
        result = CliRunner().invoke(app, ["eval", str(target), "--out", str(tmp_path / "e")])
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in flat, flat[-2000:]
        assert "a critic run, which trained model.critic (a value model), not a policy" in flat
    assert not (tmp_path / "e").exists()
    timed = CliRunner().invoke(
        app, ["bench", "decode", "--checkpoint", str(critic_run), "--out", str(tmp_path / "d")]
    )
    flat = " ".join(timed.output.split())
    assert timed.exit_code == 2 and "Traceback" not in flat, flat[-2000:]
    assert "(a value model), not a policy" in flat and "bench decode times a policy's" in flat


def test_rope_scaling_meta_cannot_say_is_refused_and_llama31s_is_written(tmp_path):
    """Model directories without a recipe: the tokenizer beside them makes one."""
    import dataclasses

    from wmtp.export.tokenizer_files import byte_level_tokenizer
    from wmtp.models.args import RopeScaling, flavour
    from wmtp.models.checkpoint import from_pretrained, read_checkpoint, save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    args = flavour("tiny").with_vocab(259)
    models = tmp_path / "models"
    for name, scaling in (("llama31", RopeScaling()), ("custom", RopeScaling(low_freq_factor=2.0))):
        model = LlamaMTP(dataclasses.replace(args, rope_scaling=scaling), attention="sdpa")
        save_wmtp(model, models / name)
        byte_level_tokenizer().save(str(models / name / "tokenizer.json"))
    result = export(models / "custom", "--to", "meta", "--out", tmp_path / "out" / "custom")
    assert result.exit_code == 2, result.output
    assert "use_scaled_rope" in result.flat and "--to hf" in result.flat
    assert not (tmp_path / "out").exists()  # nor the staging folder, nor the parent it made
    out = tmp_path / "llama31"
    result = export(models / "llama31", "--to", "meta", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "llama31" / "params.json").read_text())["use_scaled_rope"]
    assert read_checkpoint(tmp_path / "llama31").args.rope_scaling == RopeScaling()
    original = from_pretrained(models / "llama31", dtype="float32", attention="sdpa")
    exported = from_pretrained(tmp_path / "llama31", dtype="float32", attention="sdpa")
    assert torch.equal(logits(exported), logits(original))
