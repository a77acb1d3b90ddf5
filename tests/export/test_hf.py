"""``wmtp export --to hf`` of a trained tiny run, read back by transformers (no custom code) and by
wmtp: next-token logits, every head, the tokenizer, shards, the model card."""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.export_helpers import TOKENS, export, logits, wmtp_model
from wmtp.recipe._toml import loads as toml_loads


@pytest.fixture(scope="module")
def hf_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny-hf"
    result = export(tiny_run, "--to", "hf", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "(hf, float32, 2 heads)" in result.flat
    return out


def test_transformers_loads_a_plain_llama_whose_logits_are_head_1s(hf_export, tiny_run):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_export, dtype=torch.float32).eval()
    assert type(hf) is LlamaForCausalLM and hf.config.num_hidden_layers == 3  # 2 trunk + head 1
    with torch.no_grad():
        hf_logits = hf(TOKENS).logits
    head_1 = logits(wmtp_model(tiny_run))[:, :, 0]
    largest = (hf_logits - head_1).abs().max().item()
    print(f"largest |HF - wmtp head 1| logit difference (fp32): {largest:.3g}")
    assert largest < 1e-5
    assert hf.generation_config.eos_token_id == 257 and hf.config.bos_token_id == 256


def test_an_mtp_aware_reader_rebuilds_head_2_from_the_json(hf_export, tiny_run):
    """mtp_heads.json says where head 2 reads and which tensors are its layer: a LlamaDecoderLayer
    built from that alone gives wmtp's head-2 logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    info = json.loads((hf_export / "mtp_heads.json").read_text())
    assert info["n_future_tokens"] == 2 and info["heads"][1]["weights"] == "extra_heads.0."
    hf = AutoModelForCausalLM.from_pretrained(hf_export, dtype=torch.float32).eval()
    prefix, weights = info["heads"][1]["weights"], load_file(hf_export / info["weights"])
    layer = LlamaDecoderLayer(hf.config, layer_idx=info["trunk_layers"]).eval()
    layer.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items()})
    with torch.no_grad():
        out = hf(TOKENS, output_hidden_states=True)
        trunk = out.hidden_states[info["trunk_layers"]]
        position_ids = torch.arange(TOKENS.shape[1])[None]
        rope = hf.model.rotary_emb(trunk, position_ids)
        hidden = layer(trunk, position_embeddings=rope, position_ids=position_ids)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        head_2 = hf.lm_head(hf.model.norm(hidden))
    torch.testing.assert_close(head_2, logits(wmtp_model(tiny_run))[:, :, 1])


def test_wmtp_reads_every_head_back_exactly(hf_export, tiny_run):
    from wmtp.models.checkpoint import from_pretrained

    back = from_pretrained(hf_export, dtype="float32", attention="sdpa")
    assert back.n_heads == 2
    assert torch.equal(logits(back), logits(wmtp_model(tiny_run)))
    assert torch.equal(logits(wmtp_model(hf_export)), logits(wmtp_model(tiny_run)))


def test_the_byte_tokenizer_export_gives_wmtps_ids(hf_export):
    from transformers import AutoTokenizer

    from wmtp.data.tokenizers import ByteTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_export)
    for text in ("def f(x):\n    return x  # héllo, 世界 🙂\n", "s = '<s>a</s><pad>'  # html"):
        wmtp_ids = ByteTokenizer().encode(text, bos=True)  # special names in text are bytes
        assert tokenizer(text)["input_ids"] == wmtp_ids, text
        assert tokenizer.decode(wmtp_ids, skip_special_tokens=True) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        256,
        257,
        258,
    )
    card = (hf_export / "README.md").read_text()
    assert "byte tokenizer" in card and "[256] + list(text.encode('utf-8'))" in card


def test_the_model_card_front_matter_recipe_and_training(hf_export, tiny_run):
    card = (hf_export / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: transformers" in front and "pipeline_tag: text-generation" in front
    assert "- multi-token-prediction" in front
    assert "- steps: 3" in card and "input tokens:" in card and "estimated" not in card
    assert json.loads((hf_export / "fingerprint.json").read_text())["recipe_sha256"] in card
    assert (hf_export / "training_recipe.toml").read_text() == (
        tiny_run / "recipe.toml"
    ).read_text()
    assert "No `wmtp eval` results" in card


def test_sharded_past_the_size_limit_and_one_head(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    result = export(
        tiny_run, "--to", "hf", "--out", out, "--max-shard-size", "200KB", "--heads", "1"
    )
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists() and not (out / "mtp_heads.json").exists()
    assert all((out / s).stat().st_size <= 200_000 or s == shards[0] for s in shards)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf(TOKENS).logits
    torch.testing.assert_close(hf_logits, logits(wmtp_model(tiny_run))[:, :, 0])
    assert wmtp_model(out).n_heads == 1


def test_bfloat16_export_is_the_fp32_weights_rounded(tiny_run, hf_export, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    assert export(tiny_run, "--to", "hf", "--out", out, "--dtype", "bfloat16").exit_code == 0
    half, full = load_file(out / "model.safetensors"), load_file(hf_export / "model.safetensors")
    assert {t.dtype for t in half.values()} == {torch.bfloat16}
    for name, tensor in full.items():
        assert torch.equal(half[name], tensor.to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    exported = toml_loads((out / "recipe.toml").read_text())["model"]["policy"]
    assert exported["dtype"] == "bfloat16"  # wmtp eval and bench decode run it as written


def test_eval_and_bench_decode_take_the_export(hf_export, tmp_path):
    from typer.testing import CliRunner

    from wmtp.cli import app

    figures = tmp_path / "decode.json"
    args = ["bench", "decode", "--checkpoint", str(hf_export), "--prompts", "1"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "6", "--out", str(figures)])
    assert result.exit_code == 0, result.output
    decoded = json.loads(figures.read_text())
    assert decoded["n_future_tokens"] == 2 and decoded["as_loaded"]["identical_outputs"] == "1/1"
    assert decoded["prompt_layout"]["template"] == "alpaca"  # HumanEval as wmtp eval shows it
    sets = ["--set", "evaluation.max_problems=1", "--set", "evaluation.max_new_tokens=8"]
    out = tmp_path / "eval"
    args = ["eval", str(hf_export), "--no-progress", "--sandbox", "rlimits", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "humaneval" / "summary.json").read_text())
    assert summary["model"] == str(hf_export) and summary["results"]["unseen"]["problems"] == 1
    assert summary["prompts"]["template"] == "alpaca"  # the export keeps its training recipe


def test_progress_names_each_file_as_it_is_written(tiny_run, tmp_path):
    import io

    from rich.console import Console

    from wmtp.export import export_model

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    result = export_model(tiny_run, to="hf", out=tmp_path / "out", progress=True, console=console)
    assert "model.safetensors" in result.files
    shown = screen.getvalue()
    assert "writing model.safetensors" in shown and "writing mtp_heads.safetensors" in shown
