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
import os
import pickle
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


FORMAT_FILES = {
    "meta": "params.json + consolidated*.pth",
    "hf": "config.json + model*.safetensors or pytorch_model*.bin",
    "safetensors": f"{ARGS_FILE} + {WEIGHTS_FILE}",
}
"""What each format's directory holds (what :func:`holds_format` looks for)."""
FORMAT_NAMES = {"meta": "Meta's", "hf": "a Hugging Face", "safetensors": "wmtp's"}


def holds_format(path: Path, fmt: str) -> bool:
    """Whether ``path`` holds the files of format ``fmt`` (:data:`FORMAT_FILES`)."""
    if fmt == "safetensors" and path.is_file():
        return path.suffix == ".safetensors"
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if fmt == "meta":
        return "params.json" in names and any(n.endswith(".pth") for n in names)
    if fmt == "hf":
        return "config.json" in names and any(_hf_weights_name(n) for n in names)
    return fmt == "safetensors" and ARGS_FILE in names


def _hf_weights_name(name: str) -> bool:
    """A Hugging Face weights file: safetensors, or the ``torch.save`` shards of a checkpoint
    saved before safetensors (``pytorch_model.bin``, ``pytorch_model-00001-of-00002.bin``)."""
    return name.endswith(".safetensors") or (
        name.startswith("pytorch_model") and name.endswith(".bin")
    )


def detect_format(path: str | Path) -> str:
    """``meta``, ``hf`` or ``safetensors`` from the files at ``path``; CheckpointError otherwise."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.suffix != ".safetensors"):
        raise CheckpointError(f"checkpoint {path}: no such directory or .safetensors file")
    for fmt in ("safetensors", "meta", "hf"):  # wmtp's first: its exports may hold the others'
        if holds_format(path, fmt):
            return fmt
    expected = ", ".join(f"{FORMAT_FILES[f]} ({f})" for f in ("meta", "hf", "safetensors"))
    raise CheckpointError(
        f"checkpoint {path}: unknown format; expected {expected}; found {_listing(path)}"
    )


def checkpoint_format(path: str | Path, format: str = "auto") -> str:
    """The format of the weights at ``path``: detected for ``auto``; a stated one checked
    against the files there, saying what the directory holds instead (a Hugging Face directory
    under ``format = "meta"``, a Meta download whose ``.pth`` never arrived)."""
    path = Path(path)
    if format == "auto":
        return detect_format(path)
    if format not in FORMATS:
        raise CheckpointError(f"checkpoint {path}: unknown format {format!r} (known: {FORMATS})")
    if holds_format(path, format):
        return format
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such directory or .safetensors file")
    need = f'format = "{format}" reads {FORMAT_FILES[format]}'
    try:
        found = detect_format(path)
    except CheckpointError:
        raise CheckpointError(f"checkpoint {path}: {need}; found {_listing(path)}") from None
    raise CheckpointError(
        f"checkpoint {path}: {need}, but this is {FORMAT_NAMES[found]} checkpoint "
        f'({FORMAT_FILES[found]}): set format = "{found}" or "auto"'
    )


def _listing(path: Path) -> str:
    if path.is_file():
        return f"a file, {path.name}"
    return ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "(an empty directory)"


def described_args(path: str | Path, format: str = "auto") -> ModelArgs:
    """The sizes a model directory (or wmtp ``.safetensors`` file) describes, every key read as
    its reader reads it; ``vocab_size`` -1 where only the embedding knows it (Meta)."""
    path = Path(path)
    fmt = checkpoint_format(path, format)
    if fmt == "meta":
        params = read_json(path / "params.json")
        return args_or_error(lambda: ModelArgs.from_params_json(params), path / "params.json")
    if fmt == "hf":
        config = read_json(path / "config.json")
        args = args_or_error(lambda: args_from_hf_config(config), path / "config.json")
        return args.with_heads(1 + extra_heads_beside(path))
    return wmtp_description(path)[1]


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
    require_file(file)
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: holds a JSON {type(data).__name__}, not an object of sizes")
    return data


def require_file(file: Path) -> None:
    """A CheckpointError where ``file`` is not there to read: missing, or a symbolic link whose
    target is gone (a Hugging Face cache snapshot, whose files link to ``../../blobs/``, copied
    without them)."""
    if file.is_file():
        return
    if file.is_symlink():
        raise CheckpointError(
            f"checkpoint {file}: a symbolic link to {os.readlink(file)}, which is not there (a "
            "Hugging Face cache snapshot copied without the blobs its files link to? copy it "
            "with `cp -rL`, which copies what the links name)"
        )
    raise CheckpointError(f"checkpoint: {file} is missing")


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
    theta, scaling = _rope(config)
    return ModelArgs(
        dim=dim,
        n_layers=_whole(config, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=_whole(config, "num_key_value_heads", default=n_heads),
        vocab_size=_whole(config, "vocab_size"),
        ffn_dim=_whole(config, "intermediate_size"),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
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


ROPE_KEYS = ("rope_scaling", "rope_parameters")
"""Where a ``config.json`` holds its RoPE settings: transformers 4's key, and 5's, which
transformers 5 reads only where ``rope_scaling`` is not set."""


def _rope(config: dict) -> tuple[float, RopeScaling | None]:
    """RoPE's theta and scaling as transformers reads a config (:data:`ROPE_KEYS`); a config
    whose two keys say different things (one saved by transformers 5, edited under the other
    key) is refused, naming both: transformers would run ``rope_scaling`` alone, its theta the
    top-level ``rope_theta`` or 10000, whatever ``rope_parameters`` says."""
    said = {key: _rope_under(config, key) for key in ROPE_KEYS if config.get(key)}
    if len(set(said.values())) > 1:
        both = " and ".join(f"{key} = {json.dumps(config[key])}" for key in said)
        raise ValueError(
            f"{both} say different RoPE settings (transformers runs rope_scaling alone, "
            "with the top-level rope_theta): delete the one you do not mean"
        )
    return next(iter(said.values()), (float(config.get("rope_theta", 10000.0)), None))


def _rope_under(config: dict, key: str) -> tuple[float, RopeScaling | None]:
    rope = config[key]
    if not isinstance(rope, dict):
        raise ValueError(f"{key} = {json.dumps(rope)}: an object of RoPE settings expected")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0))), _rope_scaling(rope)


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
HF_BIN_INDEX = "pytorch_model.bin.index.json"


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
    """The model's weights files: its safetensors (those the index names, else every one but the
    extra heads'); where there are none, as ``transformers`` reads an older checkpoint, its
    ``pytorch_model*.bin`` shards (those their index names, else every one)."""
    if (path / HF_INDEX).is_file():
        return _indexed_files(path / HF_INDEX)
    safetensors = sorted(p for p in path.glob("*.safetensors") if p.name != MTP_HEADS_WEIGHTS)
    if safetensors:
        return safetensors
    if (path / HF_BIN_INDEX).is_file():
        return _indexed_files(path / HF_BIN_INDEX)
    return sorted(path.glob("pytorch_model*.bin"))


def _indexed_files(index: Path) -> list[Path]:
    """The weights files a Hugging Face index names (its ``weight_map``), each there."""
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a weights index ({exc!r})") from exc
    files = [index.parent / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: names {', '.join(missing)}, which is missing")
    return files


def check_weights_whole(path: Path, fmt: str) -> None:
    """A CheckpointError naming a weights file that is cut short (an interrupted download or
    copy), from its own bookkeeping alone, in milliseconds: a safetensors header's byte ranges
    against the file's size, a ``torch.save`` zip's directory at its end; and one that is not
    there (:func:`require_file`) or not weights at all (a Git LFS pointer, another file)."""
    for file in weight_files(path, fmt):
        require_file(file)
        if file.suffix == ".safetensors":
            _check_safetensors_whole(file)
        else:
            _check_zip_whole(file)


def weight_files(path: Path, fmt: str) -> list[Path]:
    """The weights files a model of format ``fmt`` at ``path`` is read from (its heads beside
    an HF model aside)."""
    if fmt == "meta":
        return meta_shards(path)
    if fmt == "hf":
        return hf_weight_files(path)
    return [path if path.is_file() else path / FULL_WEIGHTS]


def _check_safetensors_whole(file: Path) -> None:
    header_len, header = _safetensors_header(file)
    ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
    need = 8 + header_len + max(ends, default=0)
    if file.stat().st_size < need:
        raise CheckpointError(
            f"checkpoint {file}: cut short: {file.stat().st_size:,} bytes, its header describes "
            f"{need:,} (an interrupted download or copy?)"
        )


def _safetensors_header(file: Path) -> tuple[int, dict]:
    """A safetensors file's header (its length and its JSON: tensor names to dtype, shape and
    byte range), read without torch; a CheckpointError for a file that has none."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= size - 8:
                raise ValueError(f"a header of {header_len:,} bytes")
            header = json.loads(f.read(header_len))
        for key, entry in header.items():
            if key != "__metadata__":
                entry["data_offsets"][1]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        why = _git_lfs_pointer(file) or f"not a whole safetensors file ({exc})"
        raise CheckpointError(f"checkpoint {file}: {why}") from None
    return header_len, header


GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _git_lfs_pointer(file: Path) -> str | None:
    """What a weights file is where it is the small text Git LFS leaves in a clone made without
    ``git lfs`` (a Hugging Face repository cloned with plain ``git``), else None."""
    with open(file, "rb") as f:
        if f.read(len(GIT_LFS_POINTER)) != GIT_LFS_POINTER:
            return None
    return (
        "a Git LFS pointer, not the weights (a clone made without git-lfs): run `git lfs pull` "
        "in that repository, or download the file itself"
    )


def heads_in(weights: Path) -> int:
    """Prediction heads of a wmtp weights file (full or LoRA): 1 + its ``extra_heads`` layers,
    from the names in its header (no tensor read, no torch)."""
    return 1 + extra_heads_held(_safetensors_header(weights)[1])


def extra_heads_held(keys) -> int:
    """How many ``extra_heads.{j}.`` layers these state-dict keys hold (the largest j, plus 1)."""
    indices = [key.split(".")[1] for key in keys if key.startswith("extra_heads.")]
    return 1 + max((int(j) for j in indices if j.isdigit()), default=-1)


def frozen_heads_problem(spec, key: str = "n_future_tokens") -> str | None:
    """What is wrong where a frozen model (a Rho-1 reference, a model evaluated) is asked for
    more heads than its weights hold: the builder would give it untrained copies of head 1 as
    heads 2..n, which a trained model never asks for but a frozen one cannot learn. ``spec``:
    a ``[model.*]`` section of kind ``llama_mtp``; heads held are the trained ``checkpoint``'s
    (it decides the model's heads) or else the pretrained ``path``'s."""
    from wmtp.models.locate import find_trained_weights

    if spec.checkpoint:
        held = heads_in(find_trained_weights(spec.checkpoint).file)
        source = f"the weights of checkpoint = {spec.checkpoint!r}"
    elif spec.path:
        held = described_args(spec.path, spec.format).n_future_tokens
        source = f"the weights at path = {spec.path!r}"
    else:
        return None  # fresh weights: any number of heads
    asked = spec.n_future_tokens or (held if spec.checkpoint else None)
    asked = asked or spec.resolved_sizes().get("n_future_tokens") or held
    if asked <= held:
        return None
    added = (
        f"head {asked} would be an untrained copy"
        if asked == held + 1
        else f"heads {held + 1}..{asked} would be untrained copies"
    )
    return (
        f"{asked} heads asked, but {source} hold {held} head{'s' * (held != 1)}: a frozen "
        f"model's {added} of head 1 (set {key} = {held})"
    )


def check_vocabulary(path: Path, fmt: str, tokenizer_vocab: int) -> None:
    """The embedding's rows, as the description gives them (a Meta ``params.json`` saying
    ``vocab_size = -1``: the rows of ``tok_embeddings``, read by :func:`meta_tensor_shapes`),
    against the tokenizer's ids (:func:`vocabulary_problem`)."""
    args = described_args(path, fmt)
    rows, exact = args.vocab_size, args.vocab_size == -1
    if exact:  # Meta's "the tokenizer's": the embedding has exactly its rows
        rows = _meta_embedding_rows(path, args.dim)
    problem = vocabulary_problem(rows, tokenizer_vocab, exact) if rows else None
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")


def _meta_embedding_rows(path: Path, dim: int) -> int | None:
    """``tok_embeddings``' rows across a Meta directory's shards (split by width: each shard
    holds every row; by vocabulary, as Llama 3's: the shards' rows add up); None where a shard
    is a legacy pickle."""
    shapes = [meta_tensor_shapes(shard) for shard in meta_shards(path)]
    if any(s is None or "tok_embeddings.weight" not in s for s in shapes):
        return None
    first_rows, width = shapes[0]["tok_embeddings.weight"]
    if width < dim:  # split by width
        return first_rows
    return sum(s["tok_embeddings.weight"][0] for s in shapes)  # type: ignore[index]


def vocabulary_problem(rows: int, tokenizer_vocab: int, exact: bool) -> str | None:
    """What is wrong where a model with ``rows`` token embeddings meets a tokenizer of
    ``tokenizer_vocab`` ids: fewer rows than ids (ids without an embedding), or, where the
    model's sizes say its vocabulary is the tokenizer's (``exact``), any other count (another
    tokenizer than the model's). More rows than ids is a padded embedding, and fine."""
    if rows < tokenizer_vocab:
        return (
            f"the model has {rows} token embeddings, fewer than the tokenizer's "
            f"{tokenizer_vocab} ids"
        )
    if exact and rows != tokenizer_vocab:
        return (
            f"params.json's vocab_size = -1 is the tokenizer's, but the embedding has {rows} rows "
            f"and the tokenizer {tokenizer_vocab} ids: is tokenizer.path this model's tokenizer?"
        )
    return None


def check_heads_held(path: Path, fmt: str) -> None:
    """The weights against their description: Meta's ``params.json`` ``n_future_tokens``
    against the ``extra_heads`` its weights hold (read from the first shard's tensor names:
    what ``read_meta`` checks, found without torch), then every tensor's name and shape
    (:func:`check_tensors_described`). A legacy (not zipped) ``.pth`` is left to the loader."""
    if fmt == "meta":
        shapes = meta_tensor_shapes(meta_shards(path)[0])
        held = 1 + extra_heads_held(shapes) if shapes is not None else None
        problem = heads_problem(read_json(path / "params.json"), held) if held else None
        if problem is not None:
            raise CheckpointError(f"{path / 'params.json'}: {problem}")
    check_tensors_described(path, fmt)


IGNORED_META_KEYS = ("rope.freqs",)
"""Buffers some Meta checkpoints carry that wmtp recomputes."""


def check_tensors_described(path: Path, fmt: str) -> None:
    """Every tensor a model's description implies, each of its shape, and no other, in its
    weights files (a ``config.json`` or ``params.json`` of another model than the weights
    beside it, shards of two downloads): read from their safetensors headers and ``torch.save``
    pickles alone, in milliseconds, no torch. What the loader checks before it copies a weight
    (``checkpoint.check_state_dict``), found before anything loads. Left to the loader: a Meta
    checkpoint of several shards (the loader merges them), a legacy ``torch.save`` file, a
    wmtp value model."""
    from wmtp.models.args import parameter_shapes

    found = _tensor_shapes(path, fmt)
    if found is None:
        return
    args = described_args(path, fmt)
    if args.vocab_size == -1 and "tok_embeddings.weight" in found:
        args = args.with_vocab(found["tok_embeddings.weight"][0])
    name_of = hf_and_wmtp_name if fmt == "hf" else repr
    check_shape_table(parameter_shapes(args), found, str(path), name_of)


def _tensor_shapes(path: Path, fmt: str) -> dict[str, tuple[int, ...]] | None:
    """Each tensor of the weights at ``path`` by its wmtp name, and its shape; None where they
    cannot be read without loading them (:func:`check_tensors_described`)."""
    if fmt == "meta":
        shards = meta_shards(path)
        shapes = meta_tensor_shapes(shards[0]) if len(shards) == 1 else None
        if shapes is None:
            return None
        return {k: s for k, s in shapes.items() if not k.endswith(IGNORED_META_KEYS)}
    if fmt == "hf":
        return _hf_tensor_shapes(path)
    info, _ = wmtp_description(path)
    if info.get("kind", "llama_mtp") != "llama_mtp":
        return None
    return _safetensors_shapes(weight_files(path, fmt)[0])


def _hf_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """An HF model's tensors (with the extra heads beside it) under wmtp's names, the tied
    unembedding as the embedding; None where a ``.bin`` cannot be read without torch."""
    from wmtp.models.hf_convert import tied_output, wmtp_names

    files = hf_weight_files(path)
    if extra_heads_beside(path):
        files.append(path / MTP_HEADS_WEIGHTS)
    held: dict[str, tuple[int, ...]] = {}
    for file in files:
        shapes = _safetensors_shapes(file) if file.suffix == ".safetensors" else _bin_shapes(file)
        if shapes is None:
            return None
        held |= shapes
    found = {new: held[old] for old, new in wmtp_names(held, path).items()}
    if tied_output(read_json(path / "config.json"), found):
        found["output.weight"] = found["tok_embeddings.weight"]
    return found


def _bin_shapes(file: Path) -> dict[str, tuple[int, ...]] | None:
    """A ``pytorch_model*.bin``'s shapes (:func:`meta_tensor_shapes`); None where its pickle
    holds more than a state dict's classes: the loader, torch's, reads it."""
    try:
        return meta_tensor_shapes(file)
    except CheckpointError:
        return None


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    header = _safetensors_header(file)[1]
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


def hf_and_wmtp_name(key: str) -> str:
    """A wmtp parameter said by its Hugging Face name, wmtp's beside it (a value model's under
    ``backbone.``); a key with no Hugging Face name as it is."""
    from wmtp.models.hf_convert import hf_name_of

    hf = hf_name_of(key.removeprefix(BACKBONE))
    return f"{hf!r} (wmtp {key!r})" if hf else repr(key)


BACKBONE = "backbone."
"""A value model's backbone parameters' prefix (``ValueModel.backbone``)."""


def check_shape_table(
    expected: dict[str, tuple], found: dict[str, tuple], source: str, name_of=repr
) -> None:
    """CheckpointError listing every missing, extra or mis-shaped key (with both shapes) of the
    tensors ``found`` against the ``expected`` ``{key: shape}`` table; ``name_of`` shows a key."""
    problems = [
        f"missing key {name_of(k)} (model expects shape {s})"
        for k, s in expected.items()
        if k not in found
    ]
    problems += [
        f"unexpected key {name_of(k)} (shape {tuple(s)})"
        for k, s in found.items()
        if k not in expected
    ]
    problems += [
        f"key {name_of(k)}: checkpoint has shape {tuple(s)}, model expects {tuple(expected[k])}"
        for k, s in found.items()
        if k in expected and tuple(s) != tuple(expected[k])
    ]
    if problems:
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise CheckpointError(
            f"checkpoint {source} does not fit the model ({len(problems)} problems):\n  "
            + "\n  ".join(problems[:12])
            + more
        )


def meta_tensor_shapes(shard: Path) -> dict[str, tuple[int, ...]] | None:
    """Each tensor's name and shape in a ``torch.save`` zip (Meta's ``consolidated*.pth``), from
    its pickle alone: no tensor data read, no torch, nothing but a state dict's own classes
    unpickled. None for a legacy (not zipped) file; a CheckpointError for an unreadable one."""
    import zipfile

    if not zipfile.is_zipfile(shard):
        return None
    try:
        with zipfile.ZipFile(shard) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickles:
                raise ValueError("no data.pkl in it")
            with archive.open(pickles[0]) as file:
                state = _ShapesOnly(file).load()
        return {key: tuple(shape) for key, shape in state.items()}
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as exc:
        raise CheckpointError(
            f"checkpoint {shard}: not a state dict torch.save wrote ({exc})"
        ) from None


def _tensor_shape(storage, offset, size, *rest) -> tuple[int, ...]:
    """Stands for ``torch._utils._rebuild_tensor_v2``: a tensor's shape."""
    return tuple(size)


def _parameter_shape(shape, *rest) -> tuple[int, ...]:
    """Stands for ``torch._utils._rebuild_parameter``: its tensor's shape."""
    return shape


class _StateDict(dict):
    """Stands for ``collections.OrderedDict``: ``model.state_dict()`` pickles one with its
    ``_metadata`` attribute set, which a plain dict cannot hold."""


_STATE_DICT_CLASSES = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor_shape,
    ("torch._utils", "_rebuild_parameter"): _parameter_shape,
}


class _ShapesOnly(pickle.Unpickler):
    """Unpickles a state dict's structure, each tensor as its shape; any class but the few a
    state dict is made of is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _STATE_DICT_CLASSES:
            return _STATE_DICT_CLASSES[module, name]
        if module == "torch" and name.endswith("Storage"):
            return name  # a storage's type, in its persistent id
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid):
        return None  # a storage: its data is not read


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

    if torch_save_layout(file) == "zip" and not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"checkpoint {file}: cut short: a torch.save file without the directory that ends "
            "it (an interrupted download or copy?)"
        )


def torch_save_layout(file: Path) -> str:
    """How ``torch.save`` wrote ``file``, from its first bytes: ``"zip"`` (torch 1.6 and later)
    or ``"legacy"`` (a pickle stream, as before, or with ``_use_new_zipfile_serialization=False``);
    a CheckpointError for a file that is neither (empty, an HTML error page, another format)."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: torch.save's legacy layout starts so
        return "legacy"
    why = _git_lfs_pointer(file) or (
        f"not a file torch.save wrote (it starts with {head!r}, neither a zip nor a pickle): a "
        "damaged download, or another file under this name?"
    )
    raise CheckpointError(f"checkpoint {file}: {why}")


# The identity of a pretrained model -------------------------------------------------------

IDENTITY_VERSION = 1
"""How :func:`base_identity` reads a model; an identity recorded another way is not compared."""
FIRST_BYTES = 1 << 20
SPREAD_READS, SPREAD_BYTES = 64, 16 << 10


def base_identity(path: str | Path, format: str = "auto") -> dict:
    """What tells the pretrained model at ``path`` from any other, read in milliseconds even for
    13 GB: its format and each file it is read from (its description, index and weights), by
    name, size and :func:`_sampled_sha256`. A LoRA run records its base's
    (``wmtp.train.run_dir.write_inputs``), so that a copy at another path is known as the base
    its adapters trained over, and another model of the same shapes (Llama-2-7b against
    CodeLlama-7b) is not. A CheckpointError where no model is there (:func:`checkpoint_format`)."""
    path = Path(path).expanduser()
    fmt = checkpoint_format(path, format)
    files = _model_files(path, fmt)
    return {
        "version": IDENTITY_VERSION,
        "format": fmt,
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": _sampled_sha256(f)} for f in files},
    }


def _model_files(path: Path, fmt: str) -> list[Path]:
    """The files a model of format ``fmt`` at ``path`` is read from, its description first."""
    if fmt == "meta":
        return [path / "params.json", *weight_files(path, fmt)]
    if fmt == "hf":
        named = (HF_INDEX, HF_BIN_INDEX, MTP_HEADS_INFO, MTP_HEADS_WEIGHTS)
        beside = [path / name for name in named if (path / name).is_file()]
        return [path / "config.json", *beside, *weight_files(path, fmt)]
    return [path] if path.is_file() else [path / ARGS_FILE, *weight_files(path, fmt)]


def _sampled_sha256(file: Path) -> str:
    """sha256 of the file's first MiB and of 16 KiB at each of 64 places spread over the rest:
    the whole of a small file. Not the first MiB alone: a fine-tune whose first tensor (the
    embedding) did not train starts with the same bytes as its base."""
    import hashlib

    digest, size = hashlib.sha256(), file.stat().st_size
    with open(file, "rb") as f:
        digest.update(f.read(FIRST_BYTES))
        rest = size - FIRST_BYTES
        if rest > SPREAD_READS * SPREAD_BYTES:
            for i in range(SPREAD_READS):
                f.seek(FIRST_BYTES + i * (rest - SPREAD_BYTES) // (SPREAD_READS - 1))
                digest.update(f.read(SPREAD_BYTES))
        else:
            digest.update(f.read())
    return digest.hexdigest()


def identity_difference(recorded: dict, found: dict) -> str | None:
    """What differs between the model an identity was ``recorded`` of and the one ``found``
    (both :func:`base_identity`'s), said for the user; None where they are the same model."""
    if recorded["format"] != found["format"]:
        return f"its format is {found['format']}, the base's was {recorded['format']}"
    theirs, ours = recorded["files"], found["files"]
    if set(theirs) != set(ours):
        return f"it holds {_names(ours)}, the base held {_names(theirs)}"
    for name, then in theirs.items():
        now = ours[name]
        if now["bytes"] != then["bytes"]:
            return f"its {name} has {now['bytes']:,} bytes, the base's had {then['bytes']:,}"
        if now["sha256"] != then["sha256"]:
            return f"its {name} holds other bytes than the base's, of the same size"
    return None


def _names(files: dict) -> str:
    return ", ".join(sorted(files)) or "no files"


def recorded_identity(record: object) -> dict | None:
    """``record`` (read from a file) where it is an identity of this version that
    :func:`identity_difference` can compare; None for one recorded another way, or torn."""
    if not isinstance(record, dict) or record.get("version") != IDENTITY_VERSION:
        return None
    files = record.get("files")
    if not isinstance(record.get("format"), str) or not isinstance(files, dict):
        return None
    whole = all(
        isinstance(f, dict) and isinstance(f.get("bytes"), int) and isinstance(f.get("sha256"), str)
        for f in files.values()
    )
    return record if whole else None
