"""``--to hf`` weights held to references written apart from wmtp's code: the LoRA arithmetic
done by hand from the checkpoint's raw files, then the names and q/k row order of Hugging Face's
own Llama conversion script (transformers' logits of exports: ``test_hf_reference.py``). Also what
the export says it did for an earlier checkpoint of a run, LoRA adapters read from a sharded DCP
``state/`` alone, and damaged model directories.

Tolerance: exported fp32 weights against the float64 reference merge differ by fp32 rounding of a
sum (~1e-7 here); 1e-6 is ten times that, far below what a wrong LoRA scale or an unpermuted
projection makes (checked: > 1e-3).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.export.export_helpers import export, train
from tests.train.train_helpers import TINY

RANK, ALPHA = 4, 16.0
HF_LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
}
"""Meta's projection names -> Hugging Face's, as its ``convert_llama_weights_to_hf.py`` maps them."""


@pytest.fixture(scope="module")
def dropout_lora_run(tmp_path_factory, lora_base):
    """LoRA with dropout over a wmtp base, a checkpoint at steps 1, 2 and 3 (the last two kept)."""
    lora = f"model.policy.lora={{rank = {RANK}, alpha = {ALPHA}, dropout = 0.1}}"
    sets = (f"model.policy.path='{lora_base}'", lora, "training.lr=1e-2")
    root = tmp_path_factory.mktemp("dropout-lora")
    return train(root, TINY, *sets, "training.checkpoint_every=1")


def hf_rows(w_OI: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face's conversion script's ``permute``: Meta's interleaved RoPE pairs of q/k rows
    become the two halves its rotate-half RoPE reads."""
    out, inp = w_OI.shape
    return w_OI.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def merged_by_hand(base_file, adapters_file) -> dict[str, torch.Tensor]:
    """``W + (alpha / r) B A`` in float64 from the base model's and the checkpoint's files."""
    from safetensors.torch import load_file

    weights = {k: v.double() for k, v in load_file(base_file).items()}
    adapters = load_file(adapters_file)
    for name in [k.removesuffix(".lora_A") for k in adapters if k.endswith(".lora_A")]:
        a, b = adapters[f"{name}.lora_A"].double(), adapters[f"{name}.lora_B"].double()
        weights[f"{name}.weight"] += ALPHA / RANK * (b @ a)
    return weights


def test_exported_lora_weights_are_the_base_plus_scaled_adapters_in_hfs_layout(
    dropout_lora_run, lora_base, tmp_path
):
    from safetensors.torch import load_file

    step = dropout_lora_run / "checkpoints" / "step-2"
    out = tmp_path / "hf"
    result = export(step, "--to", "hf", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert f"(step 2) -> {out} (hf, float32, 2 heads)" in result.flat
    want = merged_by_hand(lora_base / "model.safetensors", step / "lora.safetensors")
    config = json.loads((out / "config.json").read_text())
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    assert kv < heads  # grouped-query attention: k's permutation counts key/value heads
    written = {**load_file(out / "model.safetensors"), **load_file(out / "mtp_heads.safetensors")}
    trunk_and_head_1 = [(f"layers.{i}.", f"model.layers.{i}.") for i in range(3)]
    base, changed = load_file(lora_base / "model.safetensors"), 0.0
    for ours, theirs in [*trunk_and_head_1, ("extra_heads.0.", "extra_heads.0.")]:
        for meta, hf in HF_LAYER_NAMES.items():
            name = f"{ours}{meta}.weight"
            w = want[name].float()
            w = hf_rows(w, heads) if meta == "attention.wq" else w
            w = hf_rows(w, kv) if meta == "attention.wk" else w
            got = written[f"{theirs}{hf}.weight"]
            torch.testing.assert_close(got, w, rtol=0, atol=1e-6, msg=f"{theirs}{hf}")
            changed = max(changed, (want[name] - base[name]).abs().max().item())
    assert changed > 1e-3  # the adapters trained: a wrong scale would show


def test_the_card_says_which_checkpoint_and_what_was_done(dropout_lora_run, tmp_path):
    """An earlier checkpoint of a run: its step, its tokens, its adapters, heads and dtype."""
    step = dropout_lora_run / "checkpoints" / "step-2"
    out = tmp_path / "meta"
    result = export(step, "--to", "meta", "--out", out, "--dtype", "bfloat16", "--heads", "1")
    assert result.exit_code == 0, result.output
    assert "(step 2)" in result.flat and "(meta, bfloat16, 1 head)" in result.flat
    records = [json.loads(line) for line in (dropout_lora_run / "metrics.jsonl").open()]
    tokens = sum(int(r["tokens"]) for r in records if r.get("step") in (1, 2) and "tokens" in r)
    card = (out / "README.md").read_text()
    assert f"run {dropout_lora_run.name}, step 2" in card and "- steps: 2\n" in card
    assert f"- input tokens: {tokens:,}\n" in card
    assert "its next-token head (of the 2 it trained)" in card and ", bfloat16," in card
    assert "LoRA adapters: merged into the weights" in card
    written = torch.load(out / "consolidated.pth", weights_only=True)
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    assert not any(name.startswith("extra_heads.") for name in written)
    said = sum(t.numel() for t in written.values())
    assert f"{said:,} parameters" in card


def test_lora_adapters_from_the_sharded_state_alone(dropout_lora_run, tmp_path):
    """A LoRA checkpoint without ``lora.safetensors``: the adapters are read from DCP ``state/``
    (which also holds the frozen base), giving the same export."""
    from safetensors.torch import load_file

    copy = tmp_path / "run"
    shutil.copytree(dropout_lora_run, copy)
    (copy / "checkpoints" / "step-3" / "lora.safetensors").unlink()
    for source, out in ((dropout_lora_run, tmp_path / "file"), (copy, tmp_path / "state")):
        result = export(source, "--to", "hf", "--out", out, "--dtype", "float32")
        assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "mtp_heads.safetensors"):
        from_state, from_file = (
            load_file(tmp_path / "state" / name),
            load_file(tmp_path / "file" / name),
        )
        assert from_state.keys() == from_file.keys()
        assert all(torch.equal(from_state[k], from_file[k]) for k in from_file), name


@pytest.mark.parametrize("to", ["meta", "hf"])
def test_a_damaged_model_directory_is_named_exit_2(to, tiny_run, tmp_path):
    """A truncated weights file in a Meta or Hugging Face directory (no manifest to check it
    against): a located error, exit 2, no traceback, nothing written."""
    source = tmp_path / "source"
    assert export(tiny_run, "--to", to, "--out", source).exit_code == 0
    weights = source / ("consolidated.pth" if to == "meta" else "model.safetensors")
    weights.write_bytes(weights.read_bytes()[:3000])
    result = export(source, "--to", "wmtp", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    cut = "cut short: a torch.save file without" if to == "meta" else "not a whole safetensors file"
    assert f"checkpoint {weights}: {cut}" in result.flat, result.flat
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_a_moved_export_exports_again_with_its_own_tokenizer(tmp_path):
    """An export's recipe.toml names its tokenizer by the path it was written to: moved (or
    downloaded elsewhere), it is exported again from the tokenizer file it holds itself."""
    from tests.export.test_tokenizers import CODE, model_dir
    from wmtp.data.tokenizers import SentencePieceTokenizer

    source = model_dir(tmp_path / "source", 300)
    shutil.copyfile(sentencepiece_file(tmp_path), source / "tokenizer.model")
    first, moved, again = tmp_path / "first", tmp_path / "moved", tmp_path / "again"
    assert export(source, "--to", "hf", "--out", first).exit_code == 0
    first.rename(moved)
    result = export(moved, "--to", "meta", "--out", again)
    assert result.exit_code == 0, result.output
    assert (again / "tokenizer.model").read_bytes() == (moved / "tokenizer.model").read_bytes()
    ours = SentencePieceTokenizer(again / "tokenizer.model")
    assert ours.encode(CODE[0]) == SentencePieceTokenizer(source / "tokenizer.model").encode(
        CODE[0]
    )


def sentencepiece_file(folder):
    """A small SentencePiece model trained on the tokenizer tests' code lines."""
    import sentencepiece

    from tests.export.test_tokenizers import CODE

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CODE * 20), encoding="utf-8")
    prefix = folder / "sp"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")
