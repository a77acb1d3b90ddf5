"""The tokenizer beside an export, read by ``transformers.AutoTokenizer``: a SentencePiece model
and a Hugging Face ``tokenizer.json`` give the ids wmtp trained with (the byte tokenizer:
``test_hf.py``). The models here are directories with a tokenizer beside them and no recipe."""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.export_helpers import export

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "if x is None:\n    raise ValueError('x must be set')\n",
    "import math\nprint(math.sqrt(16))\n",
]


def model_dir(path, vocab_size: int):
    from wmtp.models.args import flavour
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    return save_wmtp(LlamaMTP(flavour("tiny").with_vocab(vocab_size), attention="sdpa"), path)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A Llama-2-style model directory: unk/bos/eos = 0/1/2, no pad piece, byte fallback."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CODE * 20), encoding="utf-8")
    (folder / "model").mkdir()
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "model" / "tokenizer"),
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "model" / "tokenizer.vocab").unlink()
    return model_dir(folder / "model", 300)


@pytest.fixture(scope="module")
def hf_tokenizer_model(tmp_path_factory):
    """A model directory with a byte-level BPE ``tokenizer.json`` and its tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("hf") / "model"
    folder.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CODE * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return model_dir(folder, tok.get_vocab_size())


def test_sentencepiece_exports_as_a_llama_tokenizer(sentencepiece_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wmtp.data.tokenizers import SentencePieceTokenizer

    out = tmp_path / "sp-hf"
    result = export(sentencepiece_model, "--to", "hf", "--out", out, "--heads", "1")
    assert result.exit_code == 0, result.output
    ours = SentencePieceTokenizer(sentencepiece_model / "tokenizer.model")
    theirs = AutoTokenizer.from_pretrained(out)
    for text in [*CODE, "x = {'a': [1, 2, 3]}  # ünïcode\n", "html = '<s>x</s>'\n"]:
        assert theirs(text)["input_ids"] == ours.encode(text, bos=True), text
        assert theirs.decode(ours.encode(text), skip_special_tokens=True) == text
    assert (out / "tokenizer.model").read_bytes() == (
        sentencepiece_model / "tokenizer.model"
    ).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["vocab_size"]) == (1, 2, 300)
    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == "LlamaForCausalLM"
    recipe = (out / "recipe.toml").read_text()
    assert 'kind = "sentencepiece"' in recipe and f'path = "{out / "tokenizer.model"}"' in recipe


def test_a_tokenizer_json_exports_with_its_config(hf_tokenizer_model, tmp_path):
    from transformers import AutoTokenizer

    from wmtp.data.tokenizers import HFTokenizer

    out = tmp_path / "tok-meta"
    assert export(hf_tokenizer_model, "--to", "meta", "--out", out).exit_code == 0
    ours, theirs = HFTokenizer(hf_tokenizer_model), AutoTokenizer.from_pretrained(out)
    for text in CODE:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert theirs.bos_token_id == ours.bos_id and theirs.eos_token_id == ours.eos_id
    assert (out / "tokenizer_config.json").read_text() == (
        hf_tokenizer_model / "tokenizer_config.json"
    ).read_text()
