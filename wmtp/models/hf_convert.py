"""Hugging Face Llama <-> wmtp: config fields, parameter names, and the q/k RoPE permutation.

HF's Llama applies RoPE to the two *halves* of each head (rotate-half); Meta (and wmtp) rotate
*consecutive pairs*. HF's conversion script permutes the rows of ``wq``/``wk`` within each head so
both give the same attention; reading undoes that permutation, writing applies it.

A Hugging Face Llama has one head (the next-token model: the trunk and head 1 as its layers).
Heads 2..n, when kept, sit beside it: ``mtp_heads.safetensors`` holds head k's layer under
``extra_heads.{k-2}.`` with HF's layer names (``self_attn.q_proj.weight``, ..., q/k permuted the
same way) and ``mtp_heads.json`` says how they attach (:func:`mtp_heads_info`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from wmtp.errors import CheckpointError
from wmtp.models.args import ModelArgs
from wmtp.models.descriptions import MTP_HEADS_FORMAT, MTP_HEADS_WEIGHTS

if TYPE_CHECKING:  # the names alone are read without torch (``wmtp validate``)
    import torch

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
EXTRA_HEADS = "extra_heads."


def unpermute_qk(w_OI: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows, per head."""
    out, inp = w_OI.shape
    # [heads * 2 * D/2, in] -> [heads, 2, D/2, in] -> [heads, D/2, 2, in] -> [out, in]
    return w_OI.view(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def permute_qk(w_OI: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta interleaved rows -> HF rotate-half rows, per head (inverse of :func:`unpermute_qk`)."""
    out, inp = w_OI.shape
    # [heads * D/2 * 2, in] -> [heads, D/2, 2, in] -> [heads, 2, D/2, in] -> [out, in]
    return w_OI.view(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def hf_to_wmtp(hf_sd: dict, args: ModelArgs, config: dict, path: Path) -> dict[str, torch.Tensor]:
    """HF parameter names and q/k rows -> wmtp's; unknown names are a CheckpointError."""
    names = wmtp_names(hf_sd, path)
    sd = {new: _meta_rows(new, hf_sd[old], args) for old, new in names.items()}
    if tied_output(config, sd):
        sd["output.weight"] = sd["tok_embeddings.weight"].clone()  # wmtp keeps them untied
    return sd


def wmtp_names(hf_names: Iterable[str], path: Path) -> dict[str, str]:
    """Each HF parameter name with its wmtp name (HF's rotary buffers left out); a
    CheckpointError naming those of no plain Llama."""
    names, unknown = {}, []
    for name in hf_names:
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        new = _wmtp_name(name)
        if new is None:
            unknown.append(name)
        else:
            names[name] = new
    if unknown:
        raise CheckpointError(
            f"checkpoint {path}: unexpected Hugging Face keys {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (not a plain Llama)"
        )
    return names


def tied_output(config: dict, wmtp_keys: Collection[str]) -> bool:
    """Whether the unembedding is the embedding: ``tie_word_embeddings`` and no
    ``lm_head.weight`` in the files (one there is used, as transformers uses it)."""
    return (
        "output.weight" not in wmtp_keys
        and bool(config.get("tie_word_embeddings"))
        and "tok_embeddings.weight" in wmtp_keys
    )


def _meta_rows(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """q/k rows back in Meta's order; a tensor of the wrong shape is left for the shape check,
    which names it with both shapes."""
    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.kv_heads}
    n_heads = heads.get(name.split(".", 2)[-1])
    if n_heads is None or tuple(tensor.shape) != (n_heads * args.head_dim, args.dim):
        return tensor
    return unpermute_qk(tensor, n_heads)


def _wmtp_name(name: str) -> str | None:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if name.startswith(EXTRA_HEADS):  # extra_heads.{j}.{rest} (mtp_heads.safetensors)
        _, j, rest = name.split(".", 2)
        return f"{EXTRA_HEADS}{j}.{_LAYER_NAMES[rest]}" if rest in _LAYER_NAMES else None
    parts = name.split(".", 3)  # model.layers.{i}.{rest}
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"layers.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    return None


def to_hf(name: str, tensor: torch.Tensor, a: ModelArgs) -> tuple[str, torch.Tensor]:
    """One wmtp parameter under its HF name (:func:`hf_name`), q/k rows permuted: the inverse
    of :func:`hf_to_wmtp`."""
    rest = name.split(".", 2)[-1]
    if rest == "attention.wq.weight":
        tensor = permute_qk(tensor, a.n_heads)
    elif rest == "attention.wk.weight":
        tensor = permute_qk(tensor, a.kv_heads)
    return hf_name(name), tensor


def hf_name(name: str) -> str:
    """The HF name of a wmtp parameter; an extra head's layer keeps ``extra_heads.{j}.`` before
    HF's layer names."""
    found = hf_name_of(name)
    assert found is not None, f"{name!r} has no Hugging Face name"
    return found


def hf_name_of(name: str) -> str | None:
    """:func:`hf_name`, or None for a name that is no wmtp parameter (one to name as it is)."""
    if name in _TO_HF_TOP:
        return _TO_HF_TOP[name]
    parts = name.split(".", 2)  # layers.{i}.{rest} or extra_heads.{j}.{rest}
    if len(parts) != 3 or parts[0] not in ("layers", "extra_heads") or parts[2] not in _TO_HF_LAYER:
        return None
    prefix = "model.layers." if parts[0] == "layers" else EXTRA_HEADS
    return f"{prefix}{parts[1]}.{_TO_HF_LAYER[parts[2]]}"


_TO_HF_TOP = {v: k for k, v in _TOP_NAMES.items()}
_TO_HF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}


def write_hf(model, directory: str | Path) -> Path:
    """A Hugging Face Llama checkpoint of a one-head model (for tests; ``wmtp export`` writes
    sharded files, the tokenizer and the extra heads)."""
    from wmtp.models import safetensors_file

    a = model.args
    assert a.n_future_tokens == 1, "Hugging Face Llama has one head; drop the extra heads first"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(to_hf(k, v.detach().cpu(), a) for k, v in model.state_dict().items())
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    safetensors_file.save(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config(a), indent=2))
    return directory


def mtp_heads_info(a: ModelArgs) -> dict:
    """``mtp_heads.json``: how heads 2..n of ``a`` attach to the Hugging Face model beside them."""
    trunk = a.n_trunk_layers
    heads = [{"head": 1, "predicts": "token t+1", "weights": f"model.layers.{trunk}."}]
    heads += [
        {"head": k, "predicts": f"token t+{k}", "weights": f"{EXTRA_HEADS}{k - 2}."}
        for k in range(2, a.n_future_tokens + 1)
    ]
    return {
        "format": MTP_HEADS_FORMAT,
        "format_version": 1,
        "n_future_tokens": a.n_future_tokens,
        "trunk_layers": trunk,
        "weights": MTP_HEADS_WEIGHTS,
        "heads": heads,
        "how": (
            f"Head k is one LlamaDecoderLayer (config.json's sizes) whose weights are the "
            f"tensors under its prefix (HF names). It reads the trunk output: the hidden state "
            f"after model.layers[{trunk - 1}] (hidden_states[{trunk}] with "
            "output_hidden_states=True), then applies its layer, the shared model.norm and the "
            "shared lm_head. Head 1 is model.layers[-1], so the model alone is the next-token "
            "model; the heads draft tokens t+2..t+n for self-speculative decoding."
        ),
    }


def hf_config(a: ModelArgs, dtype: str = "float32") -> dict:
    """The Llama ``config.json`` of ``a`` (one head: ``a`` must say ``n_future_tokens = 1``)."""
    rope: dict = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.rope_scaling is not None:
        s = a.rope_scaling
        rope.update(
            rope_type="llama3",
            factor=s.factor,
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_position_embeddings,
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "intermediate_size": a.hidden_dim,
        "vocab_size": a.vocab_size,
        "rms_norm_eps": a.norm_eps,
        "max_position_embeddings": a.max_seq_len,
        "rope_theta": a.rope_theta,
        "rope_scaling": None if a.rope_scaling is None else rope,
        "rope_parameters": rope,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }
