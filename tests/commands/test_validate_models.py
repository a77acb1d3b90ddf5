"""`wmtp validate` and `wmtp run` read each pretrained model's description (config.json,
params.json, wmtp_model.json) before any weight: a model wmtp cannot honour, or sizes that
disagree with the recipe, is an error located at the recipe's model.<role>.path line, exit 2, no
traceback, before a model is built; and the estimate counts a model whose sizes only its
checkpoint knows."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from tests.models.builders import tiny_hf_llama
from tests.models.test_checkpoint_paths import RECIPE
from tests.train.train_helpers import REPO

PATH_LINE = RECIPE.splitlines().index('path = "{path}"') + 1
BYTE_VOCAB = 259  # the ids of RECIPE's byte tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    tiny_hf_llama(vocab_size=300).save_pretrained(folder)
    return folder


def _recipe(tmp_path, path) -> str:
    file = tmp_path / "r.toml"
    file.write_text(RECIPE.format(path=path))
    return str(file)


def _wmtp(*args, runs) -> subprocess.CompletedProcess:
    sets = ["--set", f"experiment.runs_dir='{runs}'"]
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *map(str, args), *sets],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _shown(done) -> str:
    return " ".join((done.stdout + done.stderr).split())


def _config_with(hf_dir, tmp_path, **changes):
    folder = tmp_path / "model"
    folder.mkdir()
    for file in hf_dir.iterdir():
        (folder / file.name).symlink_to(file)
    config = json.loads((hf_dir / "config.json").read_text()) | changes
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"attention_dropout": 0.1}, "config.json: attention_dropout = 0.1 is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
        # written by hand or another tool: each was a traceback, or validate "ok" then a crash
        ({"num_attention_heads": 0}, "num_attention_heads = 0: a positive whole number"),
        ({"vocab_size": None}, "vocab_size = null: a positive whole number expected"),
        ({"num_hidden_layers": 3.0}, "num_hidden_layers = 3.0: a positive whole number"),
        ({"hidden_size": "64"}, 'hidden_size = "64": a positive whole number expected'),
        ({"rope_parameters": [1, 2]}, "rope_parameters = [1, 2]: an object of RoPE settings"),
        ({"rms_norm_eps": -1e-6}, "norm_eps = -1e-06: a positive number expected"),
    ],
    ids=[
        "attention_dropout",
        "yarn",
        "no_heads",
        "null_vocab",
        "float_layers",
        "text_width",
        "rope_list",
        "negative_eps",
    ],
)
def test_a_config_wmtp_cannot_honour_is_refused_at_the_recipes_path_line(
    hf_dir, tmp_path, changes, says
):
    recipe = _recipe(tmp_path, _config_with(hf_dir, tmp_path, **changes))
    for command in (["validate", recipe], ["run", recipe, "--dry-run"]):
        done = _wmtp(*command, runs=tmp_path / "runs")
        shown = _shown(done)
        assert done.returncode == 2, shown[-2000:]
        assert "Traceback" not in shown and says in shown, shown[-2000:]
        assert f"r.toml:{PATH_LINE}" in shown and "model.policy.path" in shown, shown[-2000:]
    assert not (tmp_path / "runs").exists()


def test_sizes_the_recipe_states_are_checked_against_the_description(hf_dir, tmp_path):
    recipe, runs = _recipe(tmp_path, hf_dir), tmp_path / "runs"
    sizes = ["--set", "model.policy.dim=64", "--set", "model.policy.n_heads=4"]
    done = _wmtp("validate", recipe, *sizes, runs=runs)
    assert done.returncode == 2
    assert "dim = 32, but the recipe says 64" in _shown(done)
    done = _wmtp("validate", recipe, "--set", "model.policy.rope_theta=500000.0", runs=runs)
    assert done.returncode == 2
    assert "rope_theta = 10000.0, but the recipe says 500000.0" in _shown(done)


def test_the_estimate_counts_a_model_whose_sizes_only_its_checkpoint_knows(hf_dir, tmp_path):
    from wmtp.models.args import param_count
    from wmtp.models.descriptions import described_args

    done = _wmtp("validate", _recipe(tmp_path, hf_dir), "--format", "json", runs=tmp_path / "r")
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = json.loads(done.stdout)["recipes"]
    estimate = report["estimate"]
    assert not any("not counted" in note for note in estimate["notes"])
    args = described_args(hf_dir)  # one head; the recipe asks two: one more layer
    two_heads = dataclasses.replace(args, n_layers=args.n_layers + 1, n_future_tokens=2)
    assert estimate["parameters"]["policy"]["total"] == param_count(two_heads)
    assert estimate["memory_gib_per_gpu"] is not None


def test_a_critic_over_a_hugging_face_directory_validates_and_is_counted(tmp_path):
    """recipes/tiny_critic.toml with its critic read from a `save_pretrained` directory of the
    tiny flavour's sizes (a value model has no n_future_tokens of its own); then the same
    directory with another width is refused at the path."""
    tiny = {"hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 192}
    tiny_hf_llama(vocab_size=259, **tiny).save_pretrained(tmp_path / "critic")
    recipe = str(REPO / "recipes" / "tiny_critic.toml")
    path = ["--set", f"model.critic.path='{tmp_path / 'critic'}'"]
    done = _wmtp("validate", recipe, *path, "--format", "json", runs=tmp_path / "runs")
    assert done.returncode == 0, _shown(done)[-2000:]
    (report,) = json.loads(done.stdout)["recipes"]
    assert report["estimate"]["parameters"]["critic"]["total"] > 0
    tiny_hf_llama(vocab_size=259, **(tiny | {"hidden_size": 96})).save_pretrained(tmp_path / "wide")
    path = ["--set", f"model.critic.path='{tmp_path / 'wide'}'"]
    done = _wmtp("validate", recipe, *path, runs=tmp_path / "runs")
    assert done.returncode == 2 and "dim = 96, but the recipe says 64" in _shown(done)


def test_a_production_recipe_over_a_checkpoint_of_other_sizes_says_how_to_take_its_sizes(tmp_path):
    """recipes/critic.toml names its critic's flavour (sheared-llama-2.7b): a critic of other
    sizes is refused with the flavour that has them and how to unset the recipe's; with
    `--set model.critic.flavour=''` the sizes are the checkpoint's and the recipe validates."""
    tiny = {"hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 192}
    tiny_hf_llama(vocab_size=259, **tiny).save_pretrained(tmp_path / "critic")
    recipe = str(REPO / "recipes" / "critic.toml")
    path = ["--set", f"model.critic.path='{tmp_path / 'critic'}'"]
    done = _wmtp("validate", recipe, *path, runs=tmp_path / "runs")
    shown = _shown(done)
    assert done.returncode == 2 and "Traceback" not in shown, shown[-2000:]
    assert "dim = 64, but the recipe says 2560 (flavour 'sheared-llama-2.7b')" in shown
    assert "to use this checkpoint: flavour = 'tiny' or leave out model.critic.flavour" in shown
    assert "--set model.critic.flavour=''" in shown
    unset = ["--set", "model.critic.flavour=''"]
    done = _wmtp("validate", recipe, *path, *unset, "--format", "json", runs=tmp_path / "runs")
    assert done.returncode == 0, _shown(done)[-2000:]
    (report,) = json.loads(done.stdout)["recipes"]
    assert 0 < report["estimate"]["parameters"]["critic"]["total"] < 10**6  # not 2.7B


def _cut(file, keep: int) -> None:
    data = file.read_bytes()
    file.unlink()  # a symlink to the module's model: cut a copy, never it
    file.write_bytes(data[:keep])


def test_weights_cut_short_are_named_before_anything_loads(hf_dir, tmp_path):
    """An interrupted download or copy, told from the files' own bookkeeping (a safetensors
    header's byte ranges, the directory that ends a torch.save zip) by validate and run, at the
    recipe's path line, before a run directory is made."""
    import torch

    from tests.models.builders import meta_state_dict
    from tests.models.test_checkpoint import PARAMS, VOCAB

    hf = _config_with(hf_dir, tmp_path)
    weights = hf / "model.safetensors"
    _cut(weights, weights.stat().st_size - 100)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps(PARAMS))
    torch.save(meta_state_dict(PARAMS, VOCAB), meta / "consolidated.00.pth")
    shard = meta / "consolidated.00.pth"
    _cut(shard, shard.stat().st_size // 2)
    cases = {hf: "model.safetensors: cut short: ", meta: "consolidated.00.pth: cut short: "}
    for folder, says in cases.items():
        recipe = _recipe(tmp_path, folder)
        for command in (["validate", recipe], ["run", recipe, "--dry-run"]):
            done = _wmtp(*command, runs=tmp_path / "runs")
            shown = _shown(done)
            assert done.returncode == 2 and "Traceback" not in shown, shown[-2000:]
            assert says in shown and "an interrupted download or copy?" in shown, shown[-2000:]
            assert f"r.toml:{PATH_LINE}" in shown and "model.policy.path" in shown
    assert not (tmp_path / "runs").exists()


def test_a_tokenizer_file_that_does_not_load_is_named_before_anything_loads(hf_dir, tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("<!DOCTYPE html> a login page saved in its place")
    recipe = _recipe(tmp_path, hf_dir)
    tokenizer = f"tokenizer={{kind='sentencepiece', path='{bad}'}}"
    for command in (["validate", recipe], ["run", recipe, "--dry-run"]):
        done = _wmtp(*command, "--set", tokenizer, runs=tmp_path / "runs")
        shown = _shown(done)
        assert done.returncode == 2 and "Traceback" not in shown, shown[-2000:]
        assert f"--set {tokenizer}: tokenizer.path:" in shown, shown[-2000:]
        assert "cannot be loaded" in shown and "not a SentencePiece model" in shown
    assert not (tmp_path / "runs").exists()


def test_a_params_json_that_miscounts_the_heads_its_weights_hold_is_named_by_validate(tmp_path):
    """Meta's params.json saying 4 heads over weights with one extra head: validate reads the
    head count from the pickle's key names (no tensor, no torch) and says what run says."""
    import torch

    from tests.models.builders import meta_state_dict
    from tests.models.test_checkpoint import PARAMS

    meta = tmp_path / "meta"
    meta.mkdir()
    held = dict(PARAMS, n_future_tokens=2)
    torch.save(meta_state_dict(held, BYTE_VOCAB), meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps(dict(held, n_future_tokens=4)))
    recipe = _recipe(tmp_path, meta)
    said = "params.json: n_future_tokens = 4, but the weights hold extra_heads.0..0, the layout "
    for command in (["validate", recipe], ["run", recipe, "--dry-run"]):
        done = _wmtp(*command, runs=tmp_path / "runs")
        shown = _shown(done)
        assert done.returncode == 2 and said in shown and "Traceback" not in shown, shown[-2000:]
        assert f"r.toml:{PATH_LINE}" in shown and "model.policy.path" in shown
    (meta / "params.json").write_text(json.dumps(held))  # as the weights are: valid
    done = _wmtp("validate", recipe, runs=tmp_path / "runs")
    assert done.returncode == 0, _shown(done)[-2000:]


def test_a_directory_of_another_format_than_the_recipe_states_is_named_as_what_it_is(
    hf_dir, tmp_path
):
    """``format = "meta"`` (the production recipes') over a Hugging Face directory, or over a
    Meta download whose ``.pth`` never arrived: located at the path line, saying what is there
    (was an IndexError traceback, exit 1, in validate and run)."""
    no_pth = tmp_path / "meta_no_pth"
    no_pth.mkdir()
    (no_pth / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "n_heads": 4}))
    cases = [
        (hf_dir, 'format = "meta" reads params.json + consolidated*.pth, but this is a Hugging '
         'Face checkpoint (config.json + model*.safetensors or pytorch_model*.bin): set format = "hf" or "auto"'),
        (no_pth, 'format = "meta" reads params.json + consolidated*.pth; found params.json'),
    ]  # fmt: skip
    for path, says in cases:
        recipe = _recipe(tmp_path, path)
        for command in (["validate", recipe], ["run", recipe, "--dry-run"]):
            done = _wmtp(*command, "--set", "model.policy.format=meta", runs=tmp_path / "runs")
            shown = _shown(done)
            assert done.returncode == 2 and "Traceback" not in shown, shown[-2000:]
            assert says in shown and "model.policy.path" in shown, shown[-2000:]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "rows, says",
    [
        (200, "the model has 200 token embeddings, fewer than the tokenizer's 259 ids"),
        (300, "params.json's vocab_size = -1 is the tokenizer's, but the embedding has 300 rows "
         "and the tokenizer 259 ids: is tokenizer.path this model's tokenizer?"),
    ],
    ids=["fewer_rows", "another_tokenizer"],
)  # fmt: skip
def test_a_meta_embedding_that_is_not_the_tokenizers_is_named_before_anything_loads(
    tmp_path, rows, says
):
    """Meta's ``vocab_size = -1`` means the embedding has exactly the tokenizer's rows: another
    count (the wrong tokenizer.model) is located at the path line by validate (the rows read
    from the pickle, no torch) and by run, before a run directory exists."""
    import torch

    from tests.models.builders import meta_state_dict
    from tests.models.test_checkpoint import PARAMS

    meta = tmp_path / "meta"
    meta.mkdir()
    torch.save(meta_state_dict(PARAMS, rows), meta / "consolidated.pth")
    (meta / "params.json").write_text(json.dumps(PARAMS))
    recipe = _recipe(tmp_path, meta)
    heads = ["--set", f"model.policy.n_future_tokens={PARAMS['n_future_tokens']}"]
    for command in (["validate", recipe], ["run", recipe, "--dry-run"], ["run", recipe]):
        done = _wmtp(*command, *heads, runs=tmp_path / "runs")
        shown = _shown(done)
        assert done.returncode == 2 and says in shown and "Traceback" not in shown, shown[-2000:]
        assert f"r.toml:{PATH_LINE}" in shown and "model.policy.path" in shown
    assert not (tmp_path / "runs").exists()
