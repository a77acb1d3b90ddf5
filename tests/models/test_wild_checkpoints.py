"""Model directories as users have them on disk, through ``wmtp validate --env`` / ``wmtp run``
and the builder those commands call: files ``torch.save`` wrote in either of its layouts, a
``config.json`` edited across transformers' two RoPE keys, and weights that are not there (a
clone made without git-lfs, a Hugging Face cache snapshot copied without its blobs, a wmtp
directory whose weights never arrived). Each directory is written by the format's own writer
(``torch.save``, transformers' ``save_pretrained``, wmtp's ``save_wmtp``)."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.models.builders import VOCAB, tiny_hf_llama
from tests.models.test_checkpoint import save_before_safetensors
from tests.models.test_checkpoint_paths import LLAMA2_PARAMS, TOL, build, meta_weights
from tests.train.train_helpers import cli
from wmtp import registry
from wmtp.recipe.specs.models import LlamaMTPSpec

transformers = pytest.importorskip("transformers")

BYTE_IDS = 259
"""The ids of the recipe's byte tokenizer: the embedding rows of a Meta ``vocab_size = -1``."""

RECIPE = """\
[experiment]
name = "wild"
pipeline = "baseline"
runs_dir = "{runs}"

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
kind = "jsonl"
path = "{data}"
max_length = 128
template = "plain"
"""
PATH_LINE = 11
"""The line of ``RECIPE``'s ``path = ...``, where a problem of the model there is said."""


def recipe_over(tmp_path: Path, model: Path) -> Path:
    """``RECIPE`` training over ``model`` on a tiny JSONL dataset of its own."""
    from tests.eval.tiny_runs import write_dataset

    data = write_dataset(tmp_path / "train.jsonl")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(runs=tmp_path / "runs", path=model, data=data))
    assert recipe.read_text().splitlines()[PATH_LINE - 1].startswith("path = ")
    return recipe


# torch.save's layouts -----------------------------------------------------------------------


def saved_from_a_module(sd: dict) -> collections.OrderedDict:
    """``sd`` as ``module.state_dict()`` returns it: an OrderedDict with ``_metadata`` (each
    module's version), which ``torch.save`` pickles with it."""
    module = torch.nn.Module()
    for key, tensor in sd.items():
        module.register_buffer(key.replace(".", "_"), tensor)
    state = module.state_dict()
    ordered = collections.OrderedDict(sd)
    ordered._metadata = state._metadata  # type: ignore[attr-defined]
    return ordered


def save_meta_layout(sd: dict, file: Path, layout: str) -> None:
    if layout == "module_state_dict":
        torch.save(saved_from_a_module(sd), file)
    else:  # torch.save's pickle stream, as before torch 1.6
        torch.save(sd, file, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("layout", ["module_state_dict", "legacy_pickle"])
def test_a_meta_directory_in_either_torch_save_layout_validates_and_loads(tmp_path, layout):
    """``torch.save(model.state_dict())`` (an OrderedDict holding ``_metadata``) was refused by
    the checks before loading as "not a state dict"; a ``.pth`` in torch.save's legacy layout
    passed them and failed to load ("mmap can only be used with" the zip layout). torch.load
    reads both: so do ``wmtp validate --env`` and ``wmtp run``, to every tensor exactly."""
    params = dict(LLAMA2_PARAMS)
    sd = meta_weights(params)
    for key in ("tok_embeddings.weight", "output.weight"):  # the byte tokenizer's rows
        sd[key] = torch.randn(BYTE_IDS, params["dim"])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps(params))
    save_meta_layout(sd, model_dir / "consolidated.pth", layout)
    recipe = recipe_over(tmp_path, model_dir)
    for command, flags in (("validate", ("--env",)), ("run", ("--dry-run",))):
        code, shown = cli(command, *flags, recipe)
        assert code == 0, f"wmtp {command}: {shown[-2000:]}"
    spec = LlamaMTPSpec(path=str(model_dir), dtype="float32", attention="eager")
    loaded = registry.get("model", "llama_mtp")(spec, vocab_size=BYTE_IDS).state_dict()
    assert loaded.keys() == sd.keys() - {"rope.freqs"}
    for key, tensor in loaded.items():
        assert torch.equal(tensor, sd[key]), key


def test_an_older_hf_upload_in_torch_saves_legacy_layout_gives_transformers_logits(tmp_path):
    """A ``pytorch_model.bin`` written in torch.save's legacy layout, which transformers reads:
    wmtp read it through a memory map torch refuses for that layout."""
    hf = tiny_hf_llama()
    save_before_safetensors(hf, tmp_path)
    state = hf.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    model = build(tmp_path, n_future_tokens=1)
    tokens = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        expected = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()(tokens).logits
        torch.testing.assert_close(model(tokens)[:, :, 0], expected, **TOL)


# config.json's RoPE keys ---------------------------------------------------------------------

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small: the scaling matters at 60 tokens
}


def rope_under_both_keys(directory: Path, rope_parameters: dict) -> Path:
    """A config transformers 5 saved (``rope_parameters``) given Llama-3 scaling under
    transformers 4's ``rope_scaling`` too, as Llama 3.1's model cards spell it."""
    tiny_hf_llama(vocab_size=300, rope_parameters=rope_parameters).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config["rope_scaling"] = LLAMA3_SCALING
    (directory / "config.json").write_text(json.dumps(config))
    return directory / "config.json"


def test_rope_scaling_and_rope_parameters_saying_different_things_are_refused(tmp_path):
    """transformers runs ``rope_scaling`` alone: Llama-3 scaling at theta 10000, the 500 of
    ``rope_parameters`` dropped; wmtp ran ``rope_parameters`` alone (no scaling, theta 500):
    other logits from one file, said nowhere. Now both keys are named; the same settings under
    both give transformers' logits."""
    from wmtp.errors import CheckpointError

    rope_under_both_keys(tmp_path, {"rope_type": "default", "rope_theta": 500.0})
    with pytest.raises(CheckpointError) as err:
        build(tmp_path, n_future_tokens=1)
    assert "config.json: rope_scaling = {" in str(err.value), str(err.value)
    assert "and rope_parameters = {" in str(err.value), str(err.value)
    assert "say different RoPE settings" in str(err.value), str(err.value)

    same = tmp_path / "same"
    rope_under_both_keys(same, dict(LLAMA3_SCALING, rope_theta=10000.0))
    hf = transformers.LlamaForCausalLM.from_pretrained(same).eval()
    model = build(same, n_future_tokens=1)
    assert model.args.rope_scaling is not None
    tokens = torch.randint(0, VOCAB, (2, 60))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :, 0], hf(tokens).logits, **TOL)


# Weights that are not there -------------------------------------------------------------------

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4b0f6ef2b3b9c2e5f1cf1b1d5dbb2d0c1f3a1e7f9b4d6c8a0e2f4a6c8e0b2d4f6\n"
    "size 13476839424\n"
)


def hf_cloned_without_lfs(directory: Path) -> Path:
    """``git clone`` of a Hugging Face repository without git-lfs: the weights are pointers."""
    tiny_hf_llama(vocab_size=300).save_pretrained(directory)
    weights = directory / "model.safetensors"
    weights.write_text(LFS_POINTER)
    return weights


def meta_cloned_without_lfs(directory: Path) -> Path:
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(dict(LLAMA2_PARAMS, vocab_size=300)))
    weights = directory / "consolidated.pth"
    weights.write_text(LFS_POINTER)
    return weights


def hf_snapshot_copied_without_blobs(directory: Path) -> Path:
    """A Hugging Face cache snapshot (``snapshots/<rev>/`` whose files link to
    ``../../blobs/<sha>``) copied as ``cp -r`` copies it: the links, not what they name."""
    repo = directory.parent / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    tiny_hf_llama(vocab_size=300).save_pretrained(snapshot)
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(snapshot.iterdir())):
        file.rename(repo / "blobs" / f"blob{i}")
        file.symlink_to(Path("../../blobs") / f"blob{i}")
    shutil.copytree(snapshot, directory, symlinks=True)
    return directory / "model.safetensors"


def wmtp_weights_never_arrived(directory: Path) -> Path:
    from wmtp.models.args import flavour
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    save_wmtp(LlamaMTP(flavour("tiny").with_vocab(300), attention="sdpa"), directory)
    (directory / "model.safetensors").unlink()
    return directory / "model.safetensors"


def rope_keys_that_disagree(directory: Path) -> Path:
    return rope_under_both_keys(directory, {"rope_type": "default", "rope_theta": 500.0})


# Weights that are not what their description says ---------------------------------------------


def hf_config_of_another_width(directory: Path) -> Path:
    """A ``config.json`` that is not the weights' (another size's, or edited)."""
    tiny_hf_llama(vocab_size=300).save_pretrained(directory)  # intermediate_size 48
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 64
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def hf_shard_without_a_tensor(directory: Path) -> Path:
    """Shards of two downloads: the index names a tensor its shard does not hold."""
    from safetensors.torch import load_file, save_file

    tiny_hf_llama(vocab_size=300).save_pretrained(directory, max_shard_size="20KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = directory / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    tensors = load_file(shard)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return directory


def meta_params_of_another_width(directory: Path) -> Path:
    """A ``params.json`` written by hand for converted weights, ``multiple_of`` mistaken."""
    sd = meta_weights(LLAMA2_PARAMS)  # SwiGLU width 96: multiple_of 32
    for key in ("tok_embeddings.weight", "output.weight"):
        sd[key] = torch.randn(BYTE_IDS, LLAMA2_PARAMS["dim"])
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(dict(LLAMA2_PARAMS, multiple_of=64)))
    torch.save(sd, directory / "consolidated.pth")
    return directory


@pytest.mark.parametrize(
    "write, says",
    [
        (hf_cloned_without_lfs, "a Git LFS pointer, not the weights"),
        (meta_cloned_without_lfs, "a Git LFS pointer, not the weights"),
        (hf_snapshot_copied_without_blobs, "a symbolic link to ../../blobs/blob"),
        (wmtp_weights_never_arrived, "model.safetensors is missing"),
        (rope_keys_that_disagree, "say different RoPE settings"),
        (
            hf_config_of_another_width,
            "key 'model.layers.0.mlp.gate_proj.weight' (wmtp 'layers.0.feed_forward.w1.weight'): "
            "checkpoint has shape (48, 32), model expects (64, 32)",
        ),
        (
            hf_shard_without_a_tensor,
            "missing key 'model.layers.1.mlp.up_proj.weight' "
            "(wmtp 'layers.1.feed_forward.w3.weight') (model expects shape (48, 32))",
        ),
        (
            meta_params_of_another_width,
            "key 'layers.0.feed_forward.w1.weight': checkpoint has shape (96, 32), "
            "model expects (128, 32)",
        ),
    ],
    ids=[
        "hf_lfs_pointer",
        "meta_lfs_pointer",
        "hf_cache_snapshot_links",
        "wmtp_weights_missing",
        "rope_keys_disagree",
        "hf_config_of_another_width",
        "hf_shard_without_a_tensor",
        "meta_params_of_another_width",
    ],
)
def test_a_model_directory_wmtp_cannot_read_is_said_at_the_path_exit_2(tmp_path, write, says):
    """Said at the recipe's ``path`` line with the file and what to do, exit 2, no traceback.
    Before: a traceback (a dangling link, a missing ``model.safetensors``), a header length
    read from the pointer's text, a Meta pointer that passed ``validate --env``, RoPE keys that
    disagree read as one of them; weights that are not what their description says passed
    ``validate --env`` and failed only once ``wmtp run`` loaded them (minutes, for 7B)."""
    weights = write(tmp_path / "model")
    recipe = recipe_over(tmp_path, tmp_path / "model")
    code, shown = cli("validate", "--env", recipe)
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert f"{recipe}:{PATH_LINE}:1: model.policy.path:" in shown, shown[-3000:]
    assert str(weights) in shown and says in shown, shown[-3000:]


def test_the_shapes_validation_expects_are_the_models(tiny_args):
    """``parameter_shapes`` (what ``validate`` holds the files to, without torch) is the
    state dict of the model the loader builds: GQA, Meta's FFN rule, MTP heads, explicit width."""
    from wmtp.models.args import ModelArgs, parameter_shapes
    from wmtp.models.llama_mtp import LlamaMTP

    for args in (
        tiny_args,
        ModelArgs.from_params_json(dict(LLAMA2_PARAMS, ffn_dim_multiplier=1.3, vocab_size=7)),
        ModelArgs(dim=40, n_layers=3, n_heads=5, n_kv_heads=1, vocab_size=7, ffn_dim=50),
    ):
        with torch.device("meta"):
            built = LlamaMTP(args, attention="eager").state_dict()
        assert parameter_shapes(args) == {k: tuple(v.shape) for k, v in built.items()}


def hf_tied_in_shards(directory: Path) -> None:
    tiny_hf_llama(tie_word_embeddings=True).save_pretrained(directory, max_shard_size="20KB")


def hf_bin_shards(directory: Path) -> None:
    directory.mkdir()
    save_before_safetensors(tiny_hf_llama(), directory, shards=3)


def hf_with_extra_heads(directory: Path) -> None:
    """``wmtp export --to hf``'s layout: a plain Llama, heads 2..n beside it."""
    from wmtp.models.args import ModelArgs
    from wmtp.models.checkpoint import write_hf
    from wmtp.models.descriptions import MTP_HEADS_INFO, MTP_HEADS_WEIGHTS
    from wmtp.models.hf_convert import mtp_heads_info, to_hf
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.models.safetensors_file import save

    args = ModelArgs(dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                     multiple_of=16, n_future_tokens=2)  # fmt: skip
    model = LlamaMTP(args, attention="eager")
    one_head = LlamaMTP(args.with_heads(1), attention="eager")
    one_head.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("extra_heads.")}
    )
    write_hf(one_head, directory)
    heads = dict(to_hf(k, v, args) for k, v in model.state_dict().items() if "extra" in k)
    save(heads, directory / MTP_HEADS_WEIGHTS)
    (directory / MTP_HEADS_INFO).write_text(json.dumps(mtp_heads_info(args)))


def meta_model_parallel(directory: Path) -> None:
    from tests.models.test_checkpoint_paths import split_like_meta, write_meta

    params = dict(LLAMA2_PARAMS, n_kv_heads=2)
    write_meta(directory, params, {}).joinpath("consolidated.00.pth").unlink()
    for rank, shard in enumerate(split_like_meta(meta_weights(params), 2, 1)):
        torch.save(shard, directory / f"consolidated.{rank:02d}.pth")


def wmtp_value_model(directory: Path) -> None:
    from wmtp.models.args import ModelArgs
    from wmtp.models.value import ValueModel

    args = ModelArgs.from_params_json(dict(LLAMA2_PARAMS, vocab_size=VOCAB))
    ValueModel(args, head="linear", attention="eager").save(directory)


@pytest.mark.parametrize(
    "write",
    [hf_tied_in_shards, hf_bin_shards, hf_with_extra_heads, meta_model_parallel, wmtp_value_model],
)
def test_what_loads_passes_the_check_of_its_tensors(tmp_path, write):
    """The tensors' check ``validate`` runs (``check_heads_held``) refuses nothing the loader
    reads: a tied unembedding absent from the files, ``.bin`` shards, an export's extra heads,
    Meta's model-parallel shards (left to the loader), a critic wmtp saved."""
    from wmtp.models.checkpoint import read_checkpoint
    from wmtp.models.descriptions import check_heads_held, checkpoint_format

    write(tmp_path / "model")
    check_heads_held(tmp_path / "model", checkpoint_format(tmp_path / "model"))
    assert read_checkpoint(tmp_path / "model").state_dict  # and the loader reads it


# Configs as they are in the wild ---------------------------------------------------------------


def without_kv_heads(config: dict) -> None:
    """Multi-head attention as Llama-1 / Llama-2-7B configs say it: no num_key_value_heads."""
    del config["num_key_value_heads"]


def llama3_under_the_old_type_key(config: dict) -> None:
    """transformers 4's spelling of RoPE scaling: ``rope_scaling`` with ``type``, theta at the
    top."""
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    config["rope_scaling"] = rope


@pytest.mark.parametrize(
    "sizes, edit",
    [
        ({"num_key_value_heads": 4}, without_kv_heads),
        (
            {"rope_parameters": dict(LLAMA3_SCALING, rope_theta=500.0)},
            llama3_under_the_old_type_key,
        ),
        (  # Llama-3.2-1B's kind: tied, GQA, llama3 RoPE, head_dim stated, bf16 on disk
            {
                "tie_word_embeddings": True,
                "head_dim": 8,
                "rope_parameters": dict(LLAMA3_SCALING, rope_theta=500.0),
                "dtype": "bfloat16",
            },
            None,
        ),
    ],
    ids=["mha_without_kv_heads", "llama3_old_type_key", "tied_gqa_llama3_bf16"],
)
def test_configs_as_users_have_them_give_transformers_logits(tmp_path, sizes, edit):
    hf = tiny_hf_llama(**sizes)
    hf.to(torch.bfloat16 if sizes.get("dtype") == "bfloat16" else torch.float32)
    hf.save_pretrained(tmp_path)
    if edit is not None:
        config = json.loads((tmp_path / "config.json").read_text())
        edit(config)
        (tmp_path / "config.json").write_text(json.dumps(config))
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    model = build(tmp_path, n_future_tokens=1)  # float32, as the reference
    tokens = torch.randint(0, VOCAB, (2, 60))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :, 0], reference.eval()(tokens).logits, **TOL)
