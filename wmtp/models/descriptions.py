"""What a model directory says about its model before any weight is read. Torch-free: ``wmtp
validate`` and ``wmtp run`` read it to find a checkpoint wmtp cannot honour, or sizes that
disagree with the recipe, before a model is built; the readers of ``checkpoint.py`` read the
same descriptions before they load weights.

- ``meta``: ``params.json`` (``ModelArgs.from_params_json``: every key wmtp cannot honour named);
- ``hf``: ``config.json`` (:func:`args_from_hf_config`: features LlamaMTP lacks refused), with the
  extra heads ``mtp_heads.json`` says are beside it (:func:`extra_heads_beside`);
- ``safetensors`` (wmtp's): ``wmtp_model.json`` (its ``args`` and ``format_version``).

The sizes and numerics a recipe states over ``path`` are checked against them here
(:func:`check_sizes_agree`, :func:`check_numerics_agree`), by validation and by the builders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from wmtp.errors import CheckpointError
from wmtp.models.args import FLAVOURS, ModelArgs, RopeScaling
from wmtp.models.locate import FULL_WEIGHTS, MODEL_INFO

ARGS_FILE = MODEL_INFO
WEIGHTS_FILE = FULL_WEIGHTS
FORMAT_VERSION = 1
FORMATS = ("meta", "hf", "safetensors")
MTP_HEADS_WEIGHTS = "mtp_heads.safetensors"
MTP_HEADS_INFO = "mtp_heads.json"
MTP_HEADS_FORMAT = "wmtp-mtp-heads"


def detect_format(path: str | Path) -> str:
    """``meta``, ``hf`` or ``safetensors`` from the files at ``path``; CheckpointError otherwise."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return "safetensors"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory or .safetensors file")
    names = {p.name for p in path.iterdir()}
    if ARGS_FILE in names:
        return "safetensors"
    if "params.json" in names and any(n.endswith(".pth") for n in names):
        return "meta"
    if "config.json" in names and any(n.endswith(".safetensors") for n in names):
        return "hf"
    listing = ", ".join(sorted(names)[:12]) or "(empty)"
    raise CheckpointError(
        f"checkpoint {path}: unknown format; expected params.json + consolidated.pth (meta), "
        f"config.json + model*.safetensors (hf) or {ARGS_FILE} + {WEIGHTS_FILE} (wmtp); "
        f"found {listing}"
    )


def described_args(path: str | Path, format: str = "auto") -> ModelArgs:
    """The sizes a model directory (or wmtp ``.safetensors`` file) describes, every key read as
    its reader reads it; ``vocab_size`` -1 where only the embedding knows it (Meta)."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "meta":
        params = read_json(path / "params.json")
        return args_or_error(lambda: ModelArgs.from_params_json(params), path / "params.json")
    if fmt == "hf":
        config = read_json(path / "config.json")
        args = args_or_error(lambda: args_from_hf_config(config), path / "config.json")
        return args.with_heads(1 + extra_heads_beside(path))
    if fmt == "safetensors":
        return wmtp_description(path)[1]
    raise CheckpointError(f"checkpoint {path}: unknown format {fmt!r} (known: {FORMATS})")


def wmtp_description(path: Path) -> tuple[dict, ModelArgs]:
    """``wmtp_model.json`` beside wmtp's weights (a directory or the .safetensors file): the
    whole description and its sizes."""
    directory = path.parent if path.is_file() else path
    info = read_json(directory / ARGS_FILE)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory / ARGS_FILE}: format_version {info.get('format_version')!r}, "
            f"this wmtp reads {FORMAT_VERSION}"
        )
    return info, args_or_error(lambda: ModelArgs.from_dict(info["args"]), directory / ARGS_FILE)


def read_json(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"checkpoint: {file} is missing")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: holds a JSON {type(data).__name__}, not an object of sizes")
    return data


def args_or_error(make, file: Path) -> ModelArgs:
    try:
        return make()
    except KeyError as exc:
        raise CheckpointError(f"{file}: {exc} is missing") from exc
    except (AssertionError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: {exc}") from exc


def args_from_hf_config(config: dict) -> ModelArgs:
    """ModelArgs from a Llama ``config.json`` (older ``rope_theta``/``rope_scaling`` or v5
    ``rope_parameters``); features wmtp does not implement are refused, not ignored."""
    _refuse_what_wmtp_lacks(config)
    dim, n_heads = _whole(config, "hidden_size"), _whole(config, "num_attention_heads")
    head_dim = config.get("head_dim") or dim // n_heads
    if head_dim != dim // n_heads:
        raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    key = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    rope = config.get(key) or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{key} = {json.dumps(rope)}: an object of RoPE settings expected")
    rope = dict(rope)
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    return ModelArgs(
        dim=dim,
        n_layers=_whole(config, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=_whole(config, "num_key_value_heads", default=n_heads),
        vocab_size=_whole(config, "vocab_size"),
        ffn_dim=_whole(config, "intermediate_size"),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=_rope_scaling(rope),
        max_seq_len=_whole(config, "max_position_embeddings", default=4096),
        n_future_tokens=1,
    )


def _whole(config: dict, key: str, default: int | None = None) -> int:
    """``config[key]``, a positive whole number; ``default`` where it is missing or null, else a
    KeyError."""
    if default is not None and config.get(key) is None:
        return default
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} = {json.dumps(value)}: a positive whole number expected")
    return value


def _refuse_what_wmtp_lacks(config: dict) -> None:
    """A ValueError naming the first config value whose computation LlamaMTP does not have."""
    if config.get("model_type", "llama") != "llama":
        raise ValueError(f"model_type {config.get('model_type')!r} is not 'llama'")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ValueError(f"{flag} = true is not supported")
    if config.get("attention_dropout"):  # transformers drops attention weights while training
        raise ValueError(f"attention_dropout = {config['attention_dropout']} is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not 'silu'")


def _rope_scaling(rope: dict) -> RopeScaling | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"RoPE type {kind!r} is not supported (only default and llama3)")
    return RopeScaling(
        factor=rope["factor"],
        low_freq_factor=rope["low_freq_factor"],
        high_freq_factor=rope["high_freq_factor"],
        original_max_position_embeddings=rope["original_max_position_embeddings"],
    )


def extra_heads_beside(path: Path) -> int:
    """How many extra heads ``mtp_heads.json`` says are beside an HF model (0 without one)."""
    info_file = path / MTP_HEADS_INFO
    if not info_file.is_file():
        return 0
    try:
        info = json.loads(info_file.read_text())
        n = int(info["n_future_tokens"]) - 1 if info.get("format") == MTP_HEADS_FORMAT else -1
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{info_file}: not a {MTP_HEADS_FORMAT} description ({exc!r})"
        ) from exc
    if n < 0:
        raise CheckpointError(
            f"{info_file}: not a {MTP_HEADS_FORMAT} description with n_future_tokens >= 1"
        )
    if n and not (path / MTP_HEADS_WEIGHTS).is_file():
        raise CheckpointError(
            f"{info_file}: names {n} extra heads, but {MTP_HEADS_WEIGHTS} is missing"
        )
    return n


COMPARED_SIZES = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "multiple_of",
    "ffn_dim_multiplier",
    "ffn_dim",
    "vocab_size",
)
"""The recipe's size fields :func:`check_sizes_agree` compares (directly or as derived widths)."""


def check_sizes_agree(spec, args, path, section: str = "model.<role>") -> None:
    """Sizes the recipe states (its flavour's, or explicit ones) must match the checkpoint's.

    Widths are compared as derived sizes (FFN width, key/value heads), so equivalent spellings
    agree; ``n_layers`` only when the recipe sets it, since heads may be added or dropped; the
    vocabulary where both know it (a Meta ``params.json`` may leave it to the embedding). The
    message says how to agree: the flavours of the checkpoint's sizes, or none (``section``,
    the dotted key of ``spec``, names what to unset).
    """

    stated = spec.resolved_sizes()
    if not {"dim", "n_heads"} <= stated.keys():
        return
    stated_args = dataclasses.replace(
        args,
        **{
            k: v
            for k, v in stated.items()
            if k in ("dim", "n_heads", "n_kv_heads", "multiple_of", "ffn_dim_multiplier", "ffn_dim")
        },
    )
    checks = {
        "dim": (stated_args.dim, args.dim),
        "n_heads": (stated_args.n_heads, args.n_heads),
        "n_kv_heads": (stated_args.kv_heads, args.kv_heads),
        "ffn width": (stated_args.hidden_dim, args.hidden_dim),
        "vocab_size": (stated.get("vocab_size", -1), args.vocab_size),
    }
    if "n_layers" in spec.model_fields_set:
        checks["n_layers"] = (spec.n_layers, args.n_layers)
    for name, (want, have) in checks.items():
        if not (name == "vocab_size" and -1 in (want, have)) and want != have:
            raise CheckpointError(
                f"checkpoint {path}: {name} = {have!r}, but the recipe says {want!r}"
                + (f" (flavour {spec.flavour!r})" if spec.flavour else "")
                + _sizes_hint(spec, args, section)
            )


def _sizes_hint(spec, args, section: str) -> str:
    """How a recipe comes to agree with a checkpoint of other sizes: a flavour that has its
    sizes, or none stated (the sizes are then the checkpoint's)."""
    stated = [n for n in COMPARED_SIZES if n in spec.model_fields_set and getattr(spec, n) != -1]
    if spec.flavour:  # set here or inherited from a recipe this one extends
        stated.insert(0, "flavour")
    ways = [
        f"flavour = {name!r}"
        for name, f in FLAVOURS.items()
        if name != spec.flavour and _same_widths(f, args)
    ]
    if stated == ["flavour"]:
        ways.append(
            f"leave out {section}.flavour to take the checkpoint's sizes (on the command line: "
            f"--set {section}.flavour='')"
        )
    elif stated:
        keys = ", ".join(f"{section}.{n}" for n in stated)
        ways.append(f"leave out {keys} to take the checkpoint's sizes")
    return f"; to use this checkpoint: {' or '.join(ways)}" if ways else ""


def _same_widths(flavour: ModelArgs, args: ModelArgs) -> bool:
    """``flavour`` has the widths :func:`check_sizes_agree` compares (vocabularies where known)."""
    vocab_known = -1 not in (flavour.vocab_size, args.vocab_size)
    same_vocab = not vocab_known or flavour.vocab_size == args.vocab_size
    return _widths(flavour) == _widths(args) and same_vocab


def _widths(args: ModelArgs) -> tuple[int, ...]:
    return (args.dim, args.n_heads, args.kv_heads, args.hidden_dim)


PRETRAINED_NUMERICS = ("rope_theta", "rope_scaling", "norm_eps")
"""Numerics a pretrained model was trained with: a recipe that sets one over ``path`` must say
the checkpoint's (wmtp does not retarget RoPE or the norms of loaded weights)."""


def check_numerics_agree(spec, args, path) -> None:
    """The :data:`PRETRAINED_NUMERICS` the recipe sets itself (not its flavour's) must be the
    checkpoint's; otherwise they would be silently ignored."""
    for name in PRETRAINED_NUMERICS:
        if name not in spec.model_fields_set:
            continue
        want, have = getattr(spec, name), getattr(args, name)
        if name == "rope_scaling":
            want = want.model_dump() if want is not None else None
            have = dataclasses.asdict(have) if have is not None else None
        if want != have:
            raise CheckpointError(
                f"checkpoint {path}: {name} = {have!r}, but the recipe says {want!r}; a "
                f"pretrained model keeps the {name} it was trained with: leave out "
                f"model.*.{name} or set it to {have!r}"
            )


# Weights files: which, and whether whole ----------------------------------------------------

HF_INDEX = "model.safetensors.index.json"


def meta_shards(path: Path) -> list[Path]:
    """The ``.pth`` files of a Meta directory: one (any name), or ``consolidated.00.pth`` ..
    ``consolidated.{n-1}.pth`` with none missing."""
    files = sorted(path.glob("*.pth"))
    names = [f.name for f in files]
    expected = [f"consolidated.{rank:02d}.pth" for rank in range(len(files))]
    if len(files) > 1 and names != expected:
        raise CheckpointError(
            f"checkpoint {path}: .pth files {', '.join(names)}; a model-parallel checkpoint "
            f"holds {', '.join(expected)} (one per rank), so one is missing or misnamed"
        )
    return files


def hf_weight_files(path: Path) -> list[Path]:
    """The model's safetensors: those the index names, else every one but the extra heads'."""
    index = path / HF_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc!r})") from exc
        files = [path / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names {', '.join(missing)}, which is missing")
        return files
    return sorted(p for p in path.glob("*.safetensors") if p.name != MTP_HEADS_WEIGHTS)


def check_weights_whole(path: Path, fmt: str) -> None:
    """A CheckpointError naming a weights file that is cut short (an interrupted download or
    copy), from its own bookkeeping alone, in milliseconds: a safetensors header's byte ranges
    against the file's size, a ``torch.save`` zip's directory at its end."""
    if fmt == "meta":
        for shard in meta_shards(path):
            _check_zip_whole(shard)
    elif fmt == "hf":
        for file in hf_weight_files(path):
            _check_safetensors_whole(file)
    elif fmt == "safetensors":
        _check_safetensors_whole(path if path.is_file() else path / FULL_WEIGHTS)


def _check_safetensors_whole(file: Path) -> None:
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= size - 8:
                raise ValueError(f"a header of {header_len:,} bytes")
            header = json.loads(f.read(header_len))
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {file}: not a whole safetensors file ({exc})") from None
    need = 8 + header_len + max(ends, default=0)
    if size < need:
        raise CheckpointError(
            f"checkpoint {file}: cut short: {size:,} bytes, its header describes {need:,} "
            "(an interrupted download or copy?)"
        )


def check_heads_held(path: Path, fmt: str) -> None:
    """Meta's ``params.json`` ``n_future_tokens`` against the ``extra_heads`` its weights hold,
    read from the names in the first shard's pickle (no tensor loaded: what ``read_meta``
    checks, found without torch). A legacy (not zipped) ``.pth`` is left to the loader."""
    import re
    import zipfile

    if fmt != "meta":
        return
    shard = meta_shards(path)[0]
    if not zipfile.is_zipfile(shard):
        return
    with zipfile.ZipFile(shard) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        names = archive.read(pickles[0]) if pickles else b""
    indices = {int(j) for j in re.findall(rb"extra_heads\.(\d+)\.", names)}
    held = 2 + max(indices, default=-1)  # head 1 and extra_heads.0..j
    problem = heads_problem(read_json(path / "params.json"), held)
    if problem is not None:
        raise CheckpointError(f"{path / 'params.json'}: {problem}")


def heads_problem(params: dict, held: int) -> str | None:
    """What is wrong where ``params.json`` and weights holding ``held`` heads disagree."""
    if held == params.get("n_future_tokens", 1):
        return None
    said = (
        f"n_future_tokens = {params['n_future_tokens']}"
        if "n_future_tokens" in params
        else "no n_future_tokens (one head)"
    )
    found = f"extra_heads.0..{held - 2}" if held > 1 else "no extra_heads"
    return (
        f"{said}, but the weights hold {found}, the layout of n_future_tokens = {held}: "
        "set it in params.json"
    )


def _check_zip_whole(file: Path) -> None:
    import zipfile

    with open(file, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format; the legacy one is a pickle
    if zipped and not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"checkpoint {file}: cut short: a torch.save file without the directory that ends "
            "it (an interrupted download or copy?)"
        )
