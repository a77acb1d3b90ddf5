"""Checkpoint formats: read Meta, Hugging Face and wmtp weights; write wmtp (and, for tests, all).

* ``meta``: ``params.json`` + ``consolidated.pth`` (or ``consolidated.00.pth`` .. ``.NN.pth``, one per
  model-parallel rank, merged here), the layout of Meta's multi-token-prediction release
  (``layers``, ``extra_heads``, ``n_future_tokens``).
* ``hf``: ``config.json`` + ``model.safetensors`` or sharded ``model-*.safetensors`` with an index;
  HF Llama stores q/k rows permuted for its rotate-half RoPE, undone here. Extra heads written
  beside it by ``wmtp export`` (``mtp_heads.json`` + ``mtp_heads.safetensors``) come back as heads.
* ``safetensors`` (wmtp's own): ``model.safetensors`` + ``wmtp_model.json`` (sizes, model kind,
  value head) beside it, and the resolved ``recipe.toml`` when a run wrote it.

Each reader reads its format's description first (``wmtp.models.descriptions``, torch-free, what
``wmtp validate`` checks too), then the weights. Every reader returns the state dict in wmtp
(= Meta) names. Loading checks every key and shape
before a single parameter changes, so a failed load leaves nothing half-loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wmtp.atomic import replaced, write_text
from wmtp.errors import CheckpointError
from wmtp.models.args import ModelArgs
from wmtp.models.attention import ResolvedAttention
from wmtp.models.descriptions import (
    ARGS_FILE,
    FORMAT_VERSION,
    FORMATS,
    IGNORED_META_KEYS,
    MTP_HEADS_WEIGHTS,
    WEIGHTS_FILE,
    args_or_error,
    check_shape_table,
    check_weights_whole,
    checkpoint_format,
    described_args,
    detect_format,
    extra_heads_held,
    heads_in,
    heads_problem,
    hf_and_wmtp_name,
    hf_weight_files,
    meta_shards,
    read_json,
    torch_save_layout,
    wmtp_description,
)
from wmtp.models.hf_convert import (
    hf_to_wmtp,
    write_hf,
)
from wmtp.models.llama_mtp import LlamaMTP, resolve_dtype
from wmtp.models.locate import TrainedWeights, require_base_state

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Weights read from disk, in wmtp names, with the sizes they need."""

    format: str
    path: Path
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    """wmtp's json beside the weights (model kind, value head); empty for other formats."""


# Reading ------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, format: str = "auto", dtype=None) -> Checkpoint:
    """Read any supported format (``auto`` detects it); tensors cast to ``dtype`` when given."""
    path = Path(path)
    fmt = checkpoint_format(path, format)
    check_weights_whole(path, fmt)  # a file cut short or not weights at all, named before reading
    readers = {"meta": read_meta, "hf": read_hf, "safetensors": read_wmtp}
    ckpt = readers[fmt](path, dtype)
    if ckpt.args.vocab_size == -1:  # "from the tokenizer": the embedding has exactly its rows
        rows = _shape(ckpt.state_dict, "tok_embeddings.weight", path)[0]
        ckpt.args = ckpt.args.with_vocab(rows)
    return ckpt


def read_meta(path: Path, dtype=None) -> Checkpoint:
    """Meta's ``params.json`` + ``consolidated.pth``, or one ``consolidated.NN.pth`` per
    model-parallel rank, merged as Meta's code splits them (:func:`merge_model_parallel`)."""
    params = read_json(path / "params.json")
    args = args_or_error(lambda: ModelArgs.from_params_json(params), path / "params.json")
    shards = meta_shards(path)
    parts = [_load_pth(file, dtype) for file in shards]
    sd = parts[0] if len(parts) == 1 else merge_model_parallel(parts, shards, args.dim)
    sd = {k: v for k, v in sd.items() if not k.endswith(IGNORED_META_KEYS)}
    _check_meta_heads(params, sd, path / "params.json")
    return Checkpoint("meta", path, args, sd)


def _check_meta_heads(params: dict, sd: dict, params_file: Path) -> None:
    """``params.json``'s ``n_future_tokens`` against the ``extra_heads`` the weights hold."""
    problem = heads_problem(params, 1 + extra_heads_held(sd))
    if problem is not None:
        raise CheckpointError(f"{params_file}: {problem}")


def _load_pth(file: Path, dtype) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict, memory-mapped where its layout allows (zip: torch 1.6 and
    later), else read whole (the legacy pickle stream, which torch cannot map)."""
    mmap = torch_save_layout(file) == "zip"
    try:
        raw = torch.load(file, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {file}: cannot be read ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {file}: holds a {type(raw).__name__}, not a state dict")
    return {k: _cast(v, dtype) for k, v in raw.items()}


META_SPLIT_DIM = {
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "output.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w2.weight": 1,
}
"""Meta's model parallelism: column-parallel linears are split by output rows (dim 0),
row-parallel ones (``wo``, ``w2``) by input columns (dim 1); other weights (norms) are replicated."""


def merge_model_parallel(parts: list[dict], files: list[Path], dim: int) -> dict:
    """One state dict from Meta's model-parallel shards (rank order), every shard checked."""
    keys = parts[0].keys()
    for file, part in zip(files[1:], parts[1:], strict=True):
        if part.keys() != keys:
            odd = sorted(part.keys() ^ keys)[:5]
            raise CheckpointError(f"checkpoint {file}: keys differ from {files[0].name}'s: {odd}")
    return {key: _merge_key(key, [p[key] for p in parts], files[0].parent, dim) for key in keys}


def _merge_key(key: str, tensors: list[torch.Tensor], path: Path, dim: int) -> torch.Tensor:
    split = _split_dim(key, tensors[0], len(tensors), dim)
    shapes = [tuple(t.shape) for t in tensors]
    if split is None and len(set(shapes)) == 1:
        return tensors[0]
    if split is not None and len({s[:split] + s[split + 1 :] for s in shapes}) == 1:
        return torch.cat(tensors, dim=split)
    how = "replicated" if split is None else f"split along dim {split}"
    raise CheckpointError(
        f"checkpoint {path}: {key!r} is {how}, but its shards have shapes {shapes}"
    )


def _split_dim(key: str, first: torch.Tensor, n_shards: int, dim: int) -> int | None:
    if key == "tok_embeddings.weight":  # Llama 1/2 split the width, Llama 3 the vocabulary
        return 1 if first.shape[-1] * n_shards == dim else 0
    layer = key.startswith(("layers.", "extra_heads.")) and key.count(".") >= 2
    return META_SPLIT_DIM.get(key.split(".", 2)[2] if layer else key)


def read_hf(path: Path, dtype=None) -> Checkpoint:
    """A Hugging Face Llama: ``config.json`` + safetensors (or ``pytorch_model*.bin``), converted
    to wmtp names; with the extra heads beside it when ``mtp_heads.json`` names them."""
    config = read_json(path / "config.json")
    args = described_args(path, "hf")  # with the extra heads beside it
    hf_sd = {}
    for file in hf_weight_files(path):  # safetensors, or an older checkpoint's torch.save shards
        load = _load_pth if file.suffix == ".bin" else _load_safetensors
        hf_sd.update(load(file, dtype))
    if args.n_future_tokens > 1:
        hf_sd.update(_load_safetensors(path / MTP_HEADS_WEIGHTS, dtype))
    return Checkpoint("hf", path, args, hf_to_wmtp(hf_sd, args, config, path))


def read_wmtp(path: Path, dtype=None) -> Checkpoint:
    """wmtp's ``model.safetensors`` + ``wmtp_model.json`` (a directory or the .safetensors file)."""
    weights = path if path.is_file() else path / WEIGHTS_FILE
    info, args = wmtp_description(path)
    return Checkpoint("safetensors", path, args, _load_safetensors(weights, dtype), info)


def _load_safetensors(file: Path, dtype) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"checkpoint: {file} is missing")
    try:
        return {k: _cast(v, dtype) for k, v in load_file(file).items()}
    except SafetensorError as exc:
        raise CheckpointError(f"checkpoint {file}: cannot be read ({exc})") from exc


def _cast(t: torch.Tensor, dtype) -> torch.Tensor:
    return t if dtype is None or not t.is_floating_point() else t.to(dtype)


def _shape(sd: dict, key: str, path: Path) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"checkpoint {path}: key {key!r} is missing")
    return tuple(sd[key].shape)


# Checking and loading -----------------------------------------------------------------------


def check_state_dict(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, name_of=repr
) -> None:
    """CheckpointError listing every missing, extra or mis-shaped key (with both shapes)."""
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, sd, source, name_of)


def check_shapes(
    expected: dict[str, tuple], sd: dict[str, torch.Tensor], source: str, name_of=repr
) -> None:
    """:func:`check_state_dict` against a ``{key: shape}`` table; ``name_of`` shows a key."""
    check_shape_table(expected, {k: tuple(v.shape) for k, v in sd.items()}, source, name_of)


def load_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Check everything first, then copy: a failing checkpoint changes no parameter."""
    check_state_dict(model, sd, source)
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def load_trained(model: torch.nn.Module, trained: TrainedWeights) -> None:
    """Weights trained by wmtp into ``model``: every parameter (``model.safetensors``), or the
    LoRA adapters over the base it already holds (``lora.safetensors``). Every key and shape is
    checked before anything is copied; tensors take the model's device and dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    param = next(model.parameters())
    try:
        sd = load_file(str(trained.file), device=str(param.device))
    except SafetensorError as exc:
        raise CheckpointError(f"checkpoint {trained.file}: cannot be read ({exc})") from exc
    sd = {k: v.to(param.dtype) if v.is_floating_point() else v for k, v in sd.items()}
    what = "every weight" if trained.kind == "full" else "LoRA adapters"
    log.info("checkpoint: %s from %s (trained by wmtp)", what, trained.file)
    if trained.kind == "full":
        load_checked(model, sd, str(trained.file))
        return
    from wmtp.models.lora import lora_state_dict

    trained_keys = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    if not trained_keys:
        raise CheckpointError(
            f"checkpoint {trained.file} holds LoRA adapters, but the recipe's model has none "
            "(set its lora section as the run that trained them did)"
        )
    check_shapes(trained_keys, sd, f"{trained.file} (LoRA adapters)")
    with torch.no_grad():
        model.load_state_dict(sd, strict=False)


# Sharded state ---------------------------------------------------------------------------------

MODEL_PREFIX = "model."
"""The trainer saves ``{"model": ..., "optimizer": ...}``; DCP flattens keys to ``model.<fqn>``."""


def load_base_from_state(model: torch.nn.Module, trained: TrainedWeights) -> None:
    """LoRA adapters trained over a random initialisation (no ``path``): their
    ``lora.safetensors`` holds the adapters alone, and the base they add to only the
    checkpoint's DCP ``state/``, read whole into ``model`` (a model built anew draws another)."""
    state_dir = require_base_state(trained.directory)
    state = read_dcp_model_state(state_dir)
    log.info("checkpoint: the base of its LoRA adapters from %s", state_dir)
    with torch.no_grad():
        model.load_state_dict(state)


def read_dcp_model_state(state_dir: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a DCP checkpoint, whole, on the CPU (in the dtypes it was saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(state_dir)).read_metadata()
    except Exception as exc:  # DCP raises plain errors for a missing or torn .metadata
        raise CheckpointError(f"{state_dir}: not a readable DCP checkpoint ({exc})") from exc
    model = {
        key.removeprefix(MODEL_PREFIX): torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not model:
        raise CheckpointError(f"{state_dir}: holds no model state (keys {MODEL_PREFIX}*)")
    try:
        with _one_process_is_the_intent():
            dcp.load({"model": model}, checkpoint_id=str(state_dir), no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"{state_dir}: cannot be read ({exc})") from exc
    return model


@contextlib.contextmanager
def _one_process_is_the_intent():
    """DCP warns that it assumes one process without a process group: that is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        yield


def resize_heads(args: ModelArgs, sd: dict, n_future_tokens: int) -> tuple[ModelArgs, dict]:
    """Give a checkpoint ``n`` heads: extra heads start as copies of head 1, surplus ones go."""
    old = args.n_future_tokens
    if n_future_tokens == old:
        return args, sd
    sd = {k: v for k, v in sd.items() if not _is_extra_head(k, n_future_tokens - 1)}
    head1 = f"layers.{args.n_layers - old}."
    for j in range(old - 1, n_future_tokens - 1):
        for key in [k for k in sd if k.startswith(head1)]:
            sd[f"extra_heads.{j}." + key[len(head1) :]] = sd[key].clone()
    log.info("checkpoint: %s", _heads_change(old, n_future_tokens))
    return args.with_heads(n_future_tokens), sd


def _heads_change(held: int, asked: int) -> str:
    said = f"{held} head{'s' * (held != 1)}, {asked} asked"
    if asked > held:
        return f"{said}: heads {held + 1}..{asked} start as copies of head 1"
    return f"{said}: heads {asked + 1}..{held} are left out"


def _is_extra_head(key: str, keep: int) -> bool:
    return key.startswith("extra_heads.") and int(key.split(".")[1]) >= keep


def build_from_checkpoint(
    ckpt: Checkpoint,
    *,
    dtype,
    attention: ResolvedAttention,
    device,
    n_future_tokens: int | None = None,
) -> LlamaMTP:
    """A LlamaMTP holding ``ckpt``'s weights (built on the meta device, then filled in)."""
    if ckpt.info.get("kind", "llama_mtp") != "llama_mtp":
        raise CheckpointError(
            f"checkpoint {ckpt.path} holds a {ckpt.info['kind']!r}, not a llama_mtp; "
            "load it with wmtp.models.value.ValueModel.from_pretrained"
        )
    args, sd = ckpt.args, ckpt.state_dict
    if n_future_tokens is not None:
        args, sd = resize_heads(args, sd, n_future_tokens)
    with torch.device("meta"):
        model = LlamaMTP(args, attention=attention)
    check_state_dict(model, sd, str(ckpt.path), hf_and_wmtp_name if ckpt.format == "hf" else repr)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def from_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | str = "bfloat16",
    attention: ResolvedAttention | str = "auto",
    device: torch.device | str = "cpu",
    format: str = "auto",
    n_future_tokens: int | None = None,
) -> LlamaMTP:
    """Load a LlamaMTP from a Meta, Hugging Face or wmtp checkpoint (the format is detected).

    ``dtype`` sets parameters and compute; ``attention`` is a :class:`ResolvedAttention` (a name
    is resolved here, once, for inference on ``device``); ``n_future_tokens`` changes the number
    of heads (new heads start as copies of head 1). ``model(tokens)`` then returns logits
    ``[batch, seq, n_heads, vocab]``.
    """
    dtype = resolve_dtype(dtype)
    if isinstance(attention, str):
        from wmtp.models.attention import resolve

        attention = resolve(attention, device, dtype, training=False)
    ckpt = read_checkpoint(path, format, dtype)
    log.info("checkpoint: %s (%s format, %d heads)", path, ckpt.format, ckpt.args.n_future_tokens)
    model = build_from_checkpoint(
        ckpt, dtype=dtype, attention=attention, device=device, n_future_tokens=n_future_tokens
    )
    return model.eval()


# Writing ------------------------------------------------------------------------------------


def save_wmtp(
    model: torch.nn.Module,
    directory: str | Path,
    *,
    args: ModelArgs | None = None,
    info: dict | None = None,
    recipe_toml: str | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``wmtp_model.json`` (+ ``recipe.toml``), each file atomically."""
    from wmtp.models import safetensors_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = args or model.args
    meta = {"format_version": FORMAT_VERSION, "kind": "llama_mtp", **(info or {})}
    meta["args"] = args.to_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with replaced(directory / WEIGHTS_FILE) as tmp:
        safetensors_file.save(tensors, tmp)
    write_text(directory / ARGS_FILE, json.dumps(meta, indent=2))
    if recipe_toml is not None:
        write_text(directory / "recipe.toml", recipe_toml)
    return directory


def write_meta(model: LlamaMTP, directory: str | Path) -> Path:
    """Meta's layout (``params.json`` + ``consolidated.pth``), for tests (``wmtp export`` writes
    the same files with a dtype, progress and checks)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = model.args.to_params_json()
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with replaced(directory / "consolidated.pth") as tmp:
        torch.save(sd, tmp)
    write_text(directory / "params.json", json.dumps(params))
    return directory


__all__ = [
    "ARGS_FILE",
    "FORMATS",
    "WEIGHTS_FILE",
    "Checkpoint",
    "build_from_checkpoint",
    "check_shapes",
    "check_state_dict",
    "detect_format",
    "from_pretrained",
    "heads_in",
    "load_checked",
    "load_trained",
    "read_checkpoint",
    "resize_heads",
    "save_wmtp",
    "write_hf",
    "write_meta",
]
