"""A user's checkpoint through the builder ``wmtp run`` calls (``registry.get("model",
"llama_mtp")``, as ``wmtp.assembly.model`` does), against transformers' ``LlamaForCausalLM``.

Meta directories are written here with ``torch.save`` under Meta's key names; the Hugging Face
model each head is compared with is built from the same weights by the rule of transformers'
own Meta-to-HF conversion (q/k rows permuted per head for rotate-half RoPE), written out below.
Tolerances: fp32 on the CPU, a few tiny layers; the two implementations differ only in the
order of floating-point sums (and RoPE angles computed as cos/sin tables by both), so logits of
magnitude ~1 agree to ~1e-6; 1e-4 leaves room while any wrong weight, layout or RoPE setting
moves them by far more (each test checks that its feature changes the logits).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models.builders import VOCAB, meta_state_dict, tiny_hf_llama
from wmtp import registry
from wmtp.errors import CheckpointError
from wmtp.recipe.specs.models import LlamaMTPSpec

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
TOL = {"atol": 1e-4, "rtol": 1e-4}
LLAMA3_PARAMS = {  # GQA, theta != 10000, Meta's FFN rule with a multiplier, eps, Llama-3.1 RoPE
    "dim": 32,
    "n_layers": 5,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": -1,
    "multiple_of": 16,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-3,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
    "n_future_tokens": 3,
    "max_batch_size": 4,
}
LLAMA2_PARAMS = {  # Llama-2 / Meta's 7B MTP release spelling: no n_kv_heads, no theta
    "dim": 32,
    "n_layers": 4,
    "n_heads": 4,
    "vocab_size": -1,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "n_future_tokens": 2,
}


def build(path, **spec) -> torch.nn.Module:
    """The model ``[model.policy] path = ...`` builds in a run (frozen unless ``trainable``)."""
    trainable = spec.pop("trainable", False)
    spec = LlamaMTPSpec(path=str(path), **{"dtype": "float32", "attention": "eager", **spec})
    return registry.get("model", "llama_mtp")(spec, vocab_size=VOCAB, trainable=trainable)


def meta_ffn_width(params: dict) -> int:
    """Meta's ``FeedForward`` width: 2/3 of 4 * dim, times the multiplier, up to multiple_of."""
    hidden = int(2 * (4 * params["dim"]) / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    return params["multiple_of"] * ((hidden + params["multiple_of"] - 1) // params["multiple_of"])


def meta_weights(params: dict) -> dict[str, torch.Tensor]:
    """Random weights in Meta's names and shapes (the FFN width from Meta's formula above)."""
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    shaped = dict(params, n_kv_heads=n_kv)
    sd = meta_state_dict(shaped, VOCAB)
    width = meta_ffn_width(params)
    for key in [k for k in sd if "feed_forward" in k]:
        rows, cols = sd[key].shape
        sd[key] = torch.randn((width, cols) if rows != params["dim"] else (rows, width)) * 0.3
    return sd


def write_meta(directory: Path, params: dict, sd: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    torch.save(sd, directory / "consolidated.00.pth")
    return directory


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' ``convert_llama_weights_to_hf.permute``: Meta's interleaved q/k rows to
    rotate-half rows, per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_llama(sd: dict, params: dict, head_layer: str) -> torch.nn.Module:
    """transformers' Llama holding the trunk of ``sd`` and ``head_layer`` as its last layer."""
    n_heads, n_kv = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    n_trunk = params["n_layers"] - params["n_future_tokens"]
    rope = {"rope_type": "default", "rope_theta": params.get("rope_theta", 10000.0)}
    if params.get("use_scaled_rope"):  # Llama-3.1's constants, as Meta's apply_scaling uses
        rope.update(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    config = transformers.LlamaConfig(
        hidden_size=params["dim"],
        num_hidden_layers=n_trunk + 1,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        intermediate_size=meta_ffn_width(params),
        vocab_size=VOCAB,
        rms_norm_eps=params["norm_eps"],
        rope_parameters=rope,
        max_position_embeddings=8192,
    )
    layers = [f"layers.{i}." for i in range(n_trunk)] + [head_layer]
    names = {
        "attention.wq.weight": "self_attn.q_proj.weight",
        "attention.wk.weight": "self_attn.k_proj.weight",
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }
    hf_sd = {
        "model.embed_tokens.weight": sd["tok_embeddings.weight"],
        "model.norm.weight": sd["norm.weight"],
        "lm_head.weight": sd["output.weight"],
    }
    for i, prefix in enumerate(layers):
        for meta, hf in names.items():
            w = sd[prefix + meta]
            if meta == "attention.wq.weight":
                w = hf_permute(w, n_heads)
            elif meta == "attention.wk.weight":
                w = hf_permute(w, n_kv)
            hf_sd[f"model.layers.{i}.{hf}"] = w
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict(hf_sd, strict=True)
    return model


def head_layers(params: dict) -> list[str]:
    """Meta's MTP layout: head 1 is ``layers[-1]``, heads 2..n ``extra_heads[0..n-2]``."""
    n = params["n_future_tokens"]
    head1 = f"layers.{params['n_layers'] - n}."
    return [head1] + [f"extra_heads.{j}." for j in range(n - 1)]


# Logits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [LLAMA3_PARAMS, LLAMA2_PARAMS], ids=["llama3", "llama2"])
def test_every_head_of_a_meta_directory_gives_transformers_logits(tmp_path, params):
    """Head k of the built model = transformers' Llama of the trunk + head k's layer: proves the
    q/k layout (Meta's, no permutation), GQA, theta, Meta's FFN width rule, eps, Llama-3.1 RoPE
    and the naming of the extra heads, by logits."""
    sd = meta_weights(params)
    model = build(write_meta(tmp_path, params, sd))
    assert model.n_heads == params["n_future_tokens"]
    tokens = torch.randint(0, VOCAB, (2, 200))
    with torch.no_grad():
        logits = model(tokens)
        for k, layer in enumerate(head_layers(params)):
            expected = hf_llama(sd, params, layer)(tokens).logits
            torch.testing.assert_close(logits[:, :, k], expected, **TOL)
        if params.get("use_scaled_rope"):  # the scaling matters here: ignoring it would show
            model.args = dataclasses.replace(model.args, rope_scaling=None)
            assert not torch.allclose(model(tokens)[:, :, 0], logits[:, :, 0], **TOL)


def test_meta_ffn_width_follows_meta_formula():
    from wmtp.models.args import ModelArgs

    for dim, multiple_of, mult in [(4096, 256, None), (4096, 1024, 1.3), (8192, 4096, 1.3)]:
        params = {"dim": dim, "n_layers": 2, "n_heads": 32, "multiple_of": multiple_of}
        params |= {"ffn_dim_multiplier": mult} if mult else {}
        assert ModelArgs.from_params_json(params).hidden_dim == meta_ffn_width(params)
    assert meta_ffn_width({"dim": 4096, "multiple_of": 256}) == 11008  # Llama-2 7B
    assert meta_ffn_width({"dim": 4096, "multiple_of": 1024, "ffn_dim_multiplier": 1.3}) == 14336


@pytest.mark.parametrize(
    "config",
    [
        {"rms_norm_eps": 1e-3, "rope_theta": 1000.0},
        {"tie_word_embeddings": True, "intermediate_size": 40},
    ],
    ids=["eps_theta", "tied_odd_ffn"],
)
def test_hf_directory_through_the_builder_gives_transformers_logits(tmp_path, config):
    hf = tiny_hf_llama(**config)
    hf.save_pretrained(tmp_path)
    model = build(tmp_path, n_future_tokens=1)
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :, 0], hf(tokens).logits, **TOL)


# Model-parallel Meta shards -----------------------------------------------------------------

COLUMN = ("wq.", "wk.", "wv.", "w1.", "w3.", "output.")  # Meta's ColumnParallelLinear: dim 0
ROW = ("wo.", "w2.")  # RowParallelLinear: dim 1


def split_like_meta(sd: dict, ranks: int, embedding_dim: int) -> list[dict]:
    """Meta's model-parallel shards of ``sd``: norms replicated, the embedding split by its
    width (Llama 1/2's ParallelEmbedding, ``embedding_dim=1``) or its vocabulary (Llama 3's)."""

    def dim_of(key: str) -> int | None:
        if key == "tok_embeddings.weight":
            return embedding_dim
        last = key.split(".")[-2] + "."
        return 0 if last in COLUMN else 1 if last in ROW else None

    shards = [{} for _ in range(ranks)]
    for key, tensor in sd.items():
        d = dim_of(key)
        pieces = [tensor] * ranks if d is None else tensor.chunk(ranks, dim=d)
        for shard, piece in zip(shards, pieces, strict=True):
            shard[key] = piece.clone()
    return shards


@pytest.mark.parametrize("embedding_dim", [1, 0], ids=["llama2_embedding", "llama3_embedding"])
def test_model_parallel_shards_merge_as_meta_split_them(tmp_path, embedding_dim):
    params = dict(LLAMA2_PARAMS, n_kv_heads=2, vocab_size=54)  # stated: more rows than ids
    sd = meta_weights(params)
    for key in ("tok_embeddings.weight", "output.weight"):  # a vocabulary 2 ranks can split
        sd[key] = torch.randn(54, params["dim"])
    (tmp_path / "params.json").write_text(json.dumps(params))
    for rank, shard in enumerate(split_like_meta(sd, 2, embedding_dim)):
        torch.save(shard, tmp_path / f"consolidated.{rank:02d}.pth")
    loaded = build(tmp_path).state_dict()
    assert loaded.keys() == {k for k in sd if k != "rope.freqs"}
    for key, tensor in loaded.items():
        assert torch.equal(tensor, sd[key]), key


def test_a_missing_or_disagreeing_shard_is_named(tmp_path):
    params = dict(LLAMA2_PARAMS, n_kv_heads=2)
    shards = split_like_meta(meta_weights(params), 3, 1)
    (tmp_path / "params.json").write_text(json.dumps(params))
    for rank in (0, 2):
        torch.save(shards[rank], tmp_path / f"consolidated.{rank:02d}.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth.*missing"):
        build(tmp_path)
    shards[1]["layers.0.attention.wo.weight"] = torch.zeros(5, 5)
    torch.save(shards[1], tmp_path / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attention\.wo\.weight' is split along"):
        build(tmp_path)
    del shards[1]["layers.0.attention.wo.weight"]
    torch.save(shards[1], tmp_path / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: keys differ.*wo\.weight"):
        build(tmp_path)


# Heads --------------------------------------------------------------------------------------


def test_a_recipe_asking_more_heads_than_a_checkpoint_says_so_and_copies_head_1(tmp_path, caplog):
    """Heads to train start as copies of head 1; a frozen model is refused them (they would
    stay untrained copies)."""
    sd = meta_weights(LLAMA2_PARAMS)
    path = write_meta(tmp_path, LLAMA2_PARAMS, sd)
    with pytest.raises(CheckpointError, match=r"heads 3\.\.4 would be untrained copies"):
        build(path, n_future_tokens=4)
    with caplog.at_level("INFO", logger="wmtp.models.checkpoint"):
        model = build(path, n_future_tokens=4, trainable=True)
    assert "checkpoint: 2 heads, 4 asked: heads 3..4 start as copies of head 1" in caplog.text
    assert model.n_heads == 4 and model.args.n_layers == 6
    with torch.no_grad():
        logits = model(torch.randint(0, VOCAB, (1, 9)))
    torch.testing.assert_close(logits[:, :, 2], logits[:, :, 0])  # a copy of head 1
    assert not torch.allclose(logits[:, :, 1], logits[:, :, 0])  # head 2 is the checkpoint's


# dtype --------------------------------------------------------------------------------------


def test_bf16_end_to_end_and_fp32_weights_cast_once(tmp_path):
    sd = meta_weights(LLAMA2_PARAMS)
    path = write_meta(tmp_path, LLAMA2_PARAMS, sd)
    frozen = build(path, dtype="bfloat16", attention="sdpa")
    tensors = dict(frozen.named_parameters()) | dict(frozen.named_buffers())
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    for key, tensor in tensors.items():
        assert torch.equal(tensor, sd[key].to(torch.bfloat16)), key  # one rounding
    trained = build(path, dtype="bfloat16", attention="sdpa", trainable=True)
    for key, tensor in trained.state_dict().items():  # fp32 masters: the checkpoint, exactly
        assert tensor.dtype == torch.float32 and torch.equal(tensor, sd[key]), key


def test_a_bf16_hf_checkpoint_loads_without_a_change(tmp_path):
    hf = tiny_hf_llama().to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = build(tmp_path, dtype="bfloat16", attention="sdpa", n_future_tokens=1)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():  # the same weights: the float32 model of them agrees to fp32 digits
        fp32 = build(tmp_path, n_future_tokens=1)
        torch.testing.assert_close(fp32(tokens)[:, :, 0], hf.float()(tokens).logits, **TOL)
        for (name, p), q in zip(
            model.state_dict().items(), fp32.state_dict().values(), strict=True
        ):
            assert torch.equal(p, q.to(torch.bfloat16)), name


# Faults -------------------------------------------------------------------------------------


def test_a_mis_shaped_hf_projection_is_named_not_a_crash(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_llama().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    sd = load_file(weights)
    sd["model.layers.1.self_attn.q_proj.weight"] = torch.randn(30, 32)
    save_file(sd, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        build(tmp_path)
    assert (
        "key 'model.layers.1.self_attn.q_proj.weight' (wmtp 'layers.1.attention.wq.weight'): "
        "checkpoint has shape (30, 32), model expects (32, 32)" in str(err.value)
    )


def test_a_shard_missing_from_the_index_is_named(tmp_path):
    tiny_hf_llama().save_pretrained(tmp_path, max_shard_size="20KB")
    gone = sorted(tmp_path.glob("model-*.safetensors"))[1]
    gone.unlink()
    with pytest.raises(CheckpointError, match=rf"index\.json: names {gone.name}, which is missing"):
        build(tmp_path)


@pytest.mark.parametrize(
    "params, why",
    [
        ({"quantization_args": {}}, "'quantization_args': not a size wmtp can honour"),
        ({"n_future_tokens": 9}, "n_future_tokens = 9 is not in 1..n_layers = 4"),
        (  # Llama 4's key: Meta's Llama-3 code fixes use_scaled_rope's factor at 8
            {"use_scaled_rope": True, "rope_scaling_factor": 32.0},
            "'rope_scaling_factor': not a size wmtp can honour",
        ),
    ],
    ids=["unknown_key", "too_many_heads", "llama4_rope_factor"],
)
def test_a_params_json_it_cannot_honour_is_refused(tmp_path, params, why):
    write_meta(tmp_path, dict(LLAMA2_PARAMS, **params), meta_weights(LLAMA2_PARAMS))
    with pytest.raises(CheckpointError, match=r"params\.json: .*" + why.replace(".", r"\.")):
        build(tmp_path)


RECIPE = """\
[experiment]
name = "ckpt_fault"
pipeline = "baseline"

[tokenizer]
kind = "byte"

[model.policy]
kind = "llama_mtp"
path = "{path}"
dtype = "float32"
attention = "sdpa"
n_future_tokens = 2

[parallel]
device = "cpu"
sharding = "no_shard"

[training]
micro_batch_size = 1
max_steps = 1

[data]
kind = "humaneval"
max_length = 256
"""


def test_wmtp_run_says_where_a_checkpoint_is_wrong_exit_2(tmp_path):
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "model"
    tiny_hf_llama(vocab_size=300).save_pretrained(model_dir)
    sd = load_file(model_dir / "model.safetensors")
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.randn(15, 32)
    save_file(sd, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(path=model_dir))
    runs = f"experiment.runs_dir='{tmp_path / 'runs'}'"
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(recipe), "--set", runs, "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert str(model_dir) in done.stderr and "'model.layers.0.self_attn.k_proj.weight'" in " ".join(
        done.stderr.split()
    ), done.stderr[-3000:]
