"""Checkpoint formats against independent references: transformers' Llama, a plain MTP forward."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models.builders import PARAMS, VOCAB, meta_state_dict, tiny_hf_llama
from tests.models.reference import reference_mtp_logits
from wmtp.errors import CheckpointError
from wmtp.models.args import ModelArgs
from wmtp.models.checkpoint import (
    detect_format,
    from_pretrained,
    load_checked,
    read_checkpoint,
    save_wmtp,
    write_hf,
    write_meta,
)
from wmtp.models.llama_mtp import LlamaMTP

transformers = pytest.importorskip("transformers")


@pytest.fixture
def meta_dir(tmp_path):
    sd = meta_state_dict(PARAMS, VOCAB)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    torch.save(sd, tmp_path / "consolidated.00.pth")
    return tmp_path, sd


def test_meta_mtp_checkpoint_matches_plain_reference(meta_dir):
    path, sd = meta_dir
    model = from_pretrained(path, dtype="float32", attention="eager")
    assert model.args.vocab_size == VOCAB and model.n_heads == 3
    tokens = torch.randint(0, VOCAB, (2, 13))
    expected = reference_mtp_logits(sd, PARAMS, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 500.0},
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
                "rope_theta": 500.0,
            }
        },
    ],
    ids=["plain_rope", "llama3_rope"],
)
def test_hf_checkpoint_gives_transformers_logits(tmp_path, rope):
    hf = tiny_hf_llama(**rope)
    hf.save_pretrained(tmp_path)
    assert detect_format(tmp_path) == "hf"
    model = from_pretrained(tmp_path, dtype="float32", attention="sdpa")
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(model(tokens)[:, :, 0], expected, atol=1e-4, rtol=1e-4)


def save_before_safetensors(hf, directory, shards: int = 1) -> list[str]:
    """``hf`` as transformers 4 wrote it with ``safe_serialization=False`` (transformers 5 writes
    safetensors only): ``config.json``, the state dict in ``torch.save`` shards, and where there
    are several, ``pytorch_model.bin.index.json`` mapping each tensor to its shard."""
    hf.config.save_pretrained(directory)
    names = list(hf.state_dict())
    if shards == 1:
        torch.save(hf.state_dict(), directory / "pytorch_model.bin")
        return ["pytorch_model.bin"]
    files = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    weight_map = {name: files[i * shards // len(names)] for i, name in enumerate(names)}
    for file in files:
        torch.save(
            {n: hf.state_dict()[n] for n, f in weight_map.items() if f == file}, directory / file
        )
    total = sum(t.numel() * t.element_size() for t in hf.state_dict().values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return files


@pytest.mark.parametrize("shards", [1, 3], ids=["one_file", "sharded_with_index"])
def test_hf_checkpoint_saved_before_safetensors_gives_transformers_logits(tmp_path, shards):
    """An older upload holds ``torch.save`` shards (``pytorch_model*.bin``, with their index when
    sharded) where a newer one holds safetensors: read the same, as transformers reads it."""
    hf = tiny_hf_llama()
    save_before_safetensors(hf, tmp_path, shards)
    assert detect_format(tmp_path) == "hf"
    model = from_pretrained(tmp_path, dtype="float32", attention="sdpa")
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        expected = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()(tokens).logits
        torch.testing.assert_close(expected, hf(tokens).logits)  # the layout transformers reads
        torch.testing.assert_close(model(tokens)[:, :, 0], expected, atol=1e-4, rtol=1e-4)


def test_an_older_hf_checkpoint_cut_short_is_named(tmp_path):
    """A ``pytorch_model.bin`` whose download stopped part-way: named, from the file's own end."""
    from wmtp.models.descriptions import check_weights_whole

    save_before_safetensors(tiny_hf_llama(), tmp_path)
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cut short"):
        check_weights_whole(tmp_path, "hf")


def test_hf_writer_round_trips_through_transformers(tmp_path, tiny_args):
    import dataclasses

    args = dataclasses.replace(tiny_args, n_future_tokens=1)
    model = LlamaMTP(args, attention="eager")
    write_hf(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, args.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens)[:, :, 0], atol=1e-4, rtol=1e-4)


def test_wmtp_format_round_trip_keeps_args_and_weights(tmp_path, tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa")
    save_wmtp(model, tmp_path / "ckpt", recipe_toml="[experiment]\nname = 't'\n")
    assert (tmp_path / "ckpt" / "recipe.toml").read_text().startswith("[experiment]")
    loaded = from_pretrained(tmp_path / "ckpt", dtype="float32", attention="eager")
    assert loaded.args == tiny_args
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    assert detect_format(tmp_path / "ckpt" / "model.safetensors") == "safetensors"


def test_meta_writer_round_trip(tmp_path, tiny_args):
    model = LlamaMTP(tiny_args, attention="eager")
    loaded = from_pretrained(write_meta(model, tmp_path), dtype="float32", attention="eager")
    for (name, p), (_, q) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_dtype_drives_parameters(meta_dir):
    model = from_pretrained(meta_dir[0], dtype="bfloat16", attention="sdpa")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = model(torch.randint(0, VOCAB, (1, 5)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_more_heads_than_the_checkpoint_start_as_copies_of_head_1(meta_dir):
    model = from_pretrained(meta_dir[0], dtype="float32", attention="eager", n_future_tokens=4)
    assert model.n_heads == 4 and model.args.n_layers == 6
    tokens = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        logits = model(tokens)
    torch.testing.assert_close(logits[:, :, 3], logits[:, :, 0])


# Errors -------------------------------------------------------------------------------------


def test_unknown_format_lists_what_it_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown format.*weights\.bin"):
        from_pretrained(tmp_path)


def test_mismatches_name_the_key_and_both_shapes(tmp_path):
    params = dict(PARAMS)
    sd = meta_state_dict(params, VOCAB)
    sd["layers.0.attention.wk.weight"] = torch.randn(8, 32)  # expects (16, 32)
    del sd["layers.1.feed_forward.w3.weight"]
    sd["layers.0.attention.bias"] = torch.zeros(3)
    (tmp_path / "params.json").write_text(json.dumps(params))
    torch.save(sd, tmp_path / "consolidated.pth")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path, dtype="float32")
    message = str(err.value)
    assert (
        "'layers.0.attention.wk.weight': checkpoint has shape (8, 32), model expects (16, 32)"
        in message
    )
    assert "missing key 'layers.1.feed_forward.w3.weight'" in message
    assert "unexpected key 'layers.0.attention.bias'" in message


def test_failed_load_leaves_the_model_untouched(tiny_args):
    model = LlamaMTP(tiny_args, attention="eager")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {k: torch.zeros_like(v) for k, v in before.items()}
    bad = dict(good)
    bad["output.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"output\.weight"):
        load_checked(model, bad, "test")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    load_checked(model, good, "test")
    assert all(torch.equal(v, torch.zeros_like(v)) for v in model.state_dict().values())


def test_bad_params_json_is_located(tmp_path):
    (tmp_path / "params.json").write_text('{"dim": 32,\n "n_layers": }')
    torch.save({}, tmp_path / "consolidated.pth")
    with pytest.raises(CheckpointError, match=r"params\.json:2"):
        read_checkpoint(tmp_path)


def test_value_checkpoint_is_refused_as_a_policy(tmp_path, tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa")
    save_wmtp(model, tmp_path, info={"kind": "value_model"})
    with pytest.raises(CheckpointError, match="value_model"):
        from_pretrained(tmp_path)


def test_args_survive_json(tiny_args):
    assert ModelArgs.from_dict(json.loads(json.dumps(tiny_args.to_dict()))) == tiny_args


def test_hf_sharded_and_tied_checkpoints(tmp_path):
    hf = tiny_hf_llama(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = from_pretrained(tmp_path, dtype="float32", attention="sdpa")
    tokens = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :, 0], hf(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flag", ["attention_bias", "mlp_bias"])
def test_hf_features_wmtp_lacks_are_refused(tmp_path, flag):
    tiny_hf_llama(**{flag: True}).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{flag} = true is not supported"):
        from_pretrained(tmp_path)


def test_extra_heads_beside_an_hf_model_come_back_as_heads(tmp_path, tiny_args):
    """``mtp_heads.json`` + ``mtp_heads.safetensors`` (``wmtp export``'s layout) beside a plain HF
    Llama: the reader adds them; a description whose weights are missing is refused."""
    import dataclasses

    from safetensors.torch import save_file

    from wmtp.models.descriptions import MTP_HEADS_INFO, MTP_HEADS_WEIGHTS
    from wmtp.models.hf_convert import mtp_heads_info, to_hf

    model = LlamaMTP(tiny_args, attention="eager").eval()
    one_head = LlamaMTP(dataclasses.replace(tiny_args, n_layers=3, n_future_tokens=1), "eager")
    one_head.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("extra_heads.")}
    )
    write_hf(one_head, tmp_path)
    extra = dict(to_hf(k, v, tiny_args) for k, v in model.state_dict().items() if "extra" in k)
    save_file(extra, str(tmp_path / MTP_HEADS_WEIGHTS))
    (tmp_path / MTP_HEADS_INFO).write_text(json.dumps(mtp_heads_info(tiny_args)))
    back = from_pretrained(tmp_path, dtype="float32", attention="eager")
    assert (back.n_heads, back.args.n_layers, back.args.hidden_dim) == (2, 4, tiny_args.hidden_dim)
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))
    (tmp_path / MTP_HEADS_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"mtp_heads\.safetensors is missing"):
        from_pretrained(tmp_path)


def test_meta_params_json_says_only_what_meta_reads(tiny_args):
    import dataclasses

    from wmtp.models.args import RopeScaling

    params = tiny_args.to_params_json()
    assert ModelArgs.from_params_json(params) == tiny_args and "ffn_dim" not in params
    odd_width = dataclasses.replace(tiny_args, ffn_dim=100)
    assert ModelArgs.from_params_json(odd_width.to_params_json()) == odd_width
    with pytest.raises(ValueError, match="use_scaled_rope"):
        dataclasses.replace(tiny_args, rope_scaling=RopeScaling(factor=32.0)).to_params_json()


@pytest.mark.parametrize("key", ["rope_scaling_factor", "rope_high_freq_factor"])
def test_llama4_rope_factor_keys_are_refused_not_read_as_llama3s(tiny_args, key):
    """Meta's Llama-3 code fixes ``use_scaled_rope``'s factors (8, 1, 4, 8192) and ignores these
    keys; Llama 4's code reads them, with defaults 16 and 1 when absent. Neither agrees with
    reading them over Llama-3's defaults, so wmtp refuses them, and never writes them."""
    from wmtp.models.args import RopeScaling

    params = {**tiny_args.to_params_json(), "use_scaled_rope": True, key: 32.0}
    with pytest.raises(ValueError, match=rf"'{key}': not a size wmtp can honour"):
        ModelArgs.from_params_json(params)
    del params[key]
    llama3_constants = RopeScaling(8.0, 1.0, 4.0, 8192)  # llama-models' apply_scaling
    assert ModelArgs.from_params_json(params).rope_scaling == llama3_constants
