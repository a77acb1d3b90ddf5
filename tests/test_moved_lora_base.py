"""A LoRA run's base model moved to another folder: every command that reads the adapters takes
it at its new path, given as ``--set model.policy.path=NEW``, because the run recorded the base's
identity (``wmtp.models.descriptions.base_identity``: its files' names, sizes and sampled
bytes); another model of the same shapes there is refused, located, exit 2; a run of an older
wmtp, which recorded none, is refused as before. Real parts: a Meta-format base (Meta's key
names, ``torch.save``), a real LoRA run over it, its real export, the CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.export.export_helpers import train
from tests.models.builders import meta_state_dict, tiny_hf_llama
from tests.train.train_helpers import TINY, cli

pytestmark = [pytest.mark.minutes(3), pytest.mark.slow]

PARAMS = {  # the tiny flavour's sizes, two heads, in Meta's params.json
    "dim": 64,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": -1,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "n_future_tokens": 2,
}
BYTE_IDS = 259
SHARD = "consolidated.00.pth"
LORA = "model.policy.lora={rank = 4, alpha = 16.0}"
EVAL = ("--no-progress", "--sandbox", "rlimits", "--set", "evaluation.max_problems=1",
        "--set", "evaluation.max_new_tokens=16")  # fmt: skip
FOUND = "found here: its files are the ones their run recorded"


def meta_base(folder: Path, seed: int) -> Path:
    """A Meta checkpoint of the tiny flavour's shapes, random weights of ``seed``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(PARAMS))
    torch.save(meta_state_dict(PARAMS, BYTE_IDS), folder / SHARD)
    return folder


def completions(out: Path) -> list[tuple[str, str]]:
    lines = (out / "humaneval" / "samples.jsonl").read_text().splitlines()
    return [(s["task_id"], s["completion"]) for s in map(json.loads, lines)]


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict:
    """A LoRA run over a Meta base, its ``--no-merge-lora`` export and both evaluated with the
    base in place; then the base moved to ``new``, and at ``other`` another model of the same
    shapes."""
    root = tmp_path_factory.mktemp("moved_lora_base")
    base = meta_base(root / "models" / "base", seed=0)
    run = train(root / "lora", TINY, f"model.policy.path='{base}'", LORA, "training.lr=1e-2")
    export = root / "export"
    code, shown = cli("export", run, "--to", "wmtp", "--no-merge-lora", "--out", export)
    assert code == 0, shown[-3000:]
    before = {}
    for name, target in (("run", run), ("export", export)):
        code, shown = cli("eval", target, *EVAL, "--out", root / f"before-{name}")
        assert code == 0, shown[-3000:]
        before[name] = completions(root / f"before-{name}")
    new, other = move_away(base, root)
    return {"root": root, "run": run, "export": export, "old": base, "new": new,
            "other": other, "before": before}  # fmt: skip


def move_away(base: Path, root: Path) -> tuple[Path, Path]:
    """``base`` moved under ``root/elsewhere``, and under ``root/other`` another model of the same
    shapes (other weights): where the base is now, and the model that is not it."""
    new = root / "elsewhere" / "base"
    new.parent.mkdir()
    shutil.move(base, new)
    return new, meta_base(root / "other" / "base", seed=1)


def test_the_run_and_its_export_record_the_base_they_trained_over(moved):
    from wmtp.models.descriptions import base_identity, identity_difference

    recorded = json.loads((moved["run"] / "inputs.json").read_text())["model.policy.path"]
    assert recorded["resolved"] == str(moved["old"].resolve())
    assert set(recorded["identity"]["files"]) == {"params.json", SHARD}
    assert identity_difference(recorded["identity"], base_identity(moved["new"])) is None
    marker = json.loads((moved["export"] / "wmtp_export.json").read_text())
    assert marker["made_from"]["bases"]["model.policy.path"] == recorded


@pytest.mark.parametrize("target", ["run", "export"])
def test_eval_takes_the_moved_base_with_set_and_samples_the_same(moved, target):
    """Was refused: the run's own recipe, read again without the --set, said the old path was
    gone; then the build refused any path but the one the adapters trained over."""
    path = moved[target]
    out = moved["root"] / f"after-{target}"
    code, shown = cli(
        "eval", path, *EVAL, "--out", out, "--set", f"model.policy.path='{moved['new']}'"
    )
    assert code == 0, shown[-3000:]
    assert f"model.policy.path = '{moved['new']}': the base model the LoRA adapters" in shown
    assert shown.count(FOUND) == 1, shown[-3000:]  # said once, however often checked
    assert completions(out) == moved["before"][target]


@pytest.mark.parametrize("target", ["run", "export"])
def test_eval_without_the_new_place_says_how_to_give_it(moved, target):
    code, shown = cli("eval", moved[target], *EVAL, "--out", moved["root"] / "none")
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert f"model.policy.path: '{moved['old']}': the base model that the LoRA adapters" in shown
    assert "put it back there, or make that path a link to where it is now, or set " in shown
    assert "(--set model.policy.path=NEW)" in shown, shown[-3000:]


@pytest.mark.parametrize("target", ["run", "export"])
def test_another_model_of_the_same_shapes_is_refused_where_it_was_given(moved, target):
    other = moved["other"]
    given = f"model.policy.path='{other}'"
    code, shown = cli("eval", moved[target], *EVAL, "--out", moved["root"] / "no", "--set", given)
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    said = f"--set {given}: model.policy.path: '{other}' is not the base model the LoRA adapters in"
    assert said in shown, shown[-3000:]
    why = f"trained over ('{moved['old']}'): its {SHARD} holds other bytes than the base's"
    assert why in shown and FOUND not in shown, shown[-3000:]
    assert not (moved["root"] / "no").exists()


def test_another_model_put_where_the_base_was_is_refused(moved):
    """The path alone no longer vouches for the base: a model of the same shapes copied to it
    since the run trained is said at the recipe's key, not evaluated."""
    shutil.copytree(moved["other"], moved["old"])
    try:
        code, shown = cli("eval", moved["run"], *EVAL, "--out", moved["root"] / "no")
    finally:
        shutil.rmtree(moved["old"])
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    said = f"model.policy.path: '{moved['old']}' is not the base model the LoRA adapters in"
    assert said in shown and f"its {SHARD} holds other bytes" in shown, shown[-3000:]
    assert not (moved["root"] / "no").exists()


def recipe_over(folder: Path, run: Path, base: Path) -> Path:
    """A baseline recipe that trains on from the LoRA run's adapters over ``base``."""
    recipe = folder / "over.toml"
    recipe.write_text(
        f'extends = "{TINY}"\n\n[experiment]\nname = "over-lora"\n'
        f'runs_dir = "{folder / "runs"}"\n\n'
        f'[model.policy]\npath = "{base}"\nlora = {{ rank = 4, alpha = 16.0 }}\n'
        f'checkpoint = "{run}"\n'
    )
    return recipe


def test_a_recipe_starting_from_the_adapters_takes_the_moved_base(moved, tmp_path):
    """``wmtp validate --env`` and ``wmtp run --dry-run`` (the model built over the adapters)
    take the new place; the new run records the same identity; another model is refused at the
    --set that gave it."""
    recipe = recipe_over(tmp_path, moved["run"], moved["old"])
    new = f"model.policy.path='{moved['new']}'"
    for command in (["validate", "--env"], ["run", "--dry-run"]):
        code, shown = cli(*command, recipe, "--set", new)
        assert code == 0, shown[-3000:]
        assert FOUND in shown, shown[-3000:]
    (dry,) = (tmp_path / "runs" / "over-lora").iterdir()
    ours = json.loads((dry / "inputs.json").read_text())["model.policy.path"]
    theirs = json.loads((moved["run"] / "inputs.json").read_text())["model.policy.path"]
    assert ours["identity"] == theirs["identity"]
    other = f"model.policy.path='{moved['other']}'"
    for command in (["validate", "--env"], ["run", "--dry-run"]):
        code, shown = cli(*command, recipe, "--set", other)
        assert code == 2 and "Traceback" not in shown, shown[-3000:]
        assert f"--set {other}: model.policy.path: '{moved['other']}' is not the base" in shown
        assert f"its {SHARD} holds other bytes" in shown, shown[-3000:]


def test_export_and_bench_decode_take_the_moved_base_with_set(moved, tmp_path):
    """The export merged over the new place gives the samples of the run; ``bench decode``
    times the run over it."""
    new = f"model.policy.path='{moved['new']}'"
    out = tmp_path / "merged"
    code, shown = cli("export", moved["run"], "--to", "hf", "--out", out, "--set", new)
    assert code == 0 and FOUND in shown, shown[-3000:]
    code, shown = cli("eval", out, *EVAL, "--out", tmp_path / "eval")
    assert code == 0, shown[-3000:]
    assert completions(tmp_path / "eval") == moved["before"]["run"]
    figures = tmp_path / "decode.json"
    code, shown = cli("bench", "decode", "--checkpoint", moved["run"], "--prompts", "1",
                      "--new-tokens", "4", "--out", figures, "--set", new)  # fmt: skip
    assert code == 0 and FOUND in shown, shown[-3000:]
    assert json.loads(figures.read_text())["as_loaded"]["identical_outputs"] == "1/1"
    other = f"model.policy.path='{moved['other']}'"
    refused = [
        cli("export", moved["run"], "--to", "hf", "--out", tmp_path / "no", "--set", other),
        cli("bench", "decode", "--checkpoint", moved["run"], "--out", tmp_path / "no.json",
            "--set", other),
    ]  # fmt: skip
    for code, shown in refused:
        assert code == 2 and "Traceback" not in shown, shown[-3000:]
        assert f"--set {other}: model.policy.path: '{moved['other']}' is not the base" in shown
    assert not (tmp_path / "no").exists() and not (tmp_path / "no.json").exists()


def test_a_run_that_recorded_no_identity_is_refused_as_before(moved, tmp_path):
    """A run of an older wmtp (no base in inputs.json): the old path or a link to it, nothing
    else; its message does not offer --set."""
    older = tmp_path / "older"
    shutil.copytree(moved["run"], older)
    (older / "inputs.json").write_text("{}\n")
    code, shown = cli("eval", older, *EVAL, "--out", tmp_path / "a")
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert shown.endswith("put it back there, or make that path a link to where it is now")
    new = f"model.policy.path='{moved['new']}'"
    code, shown = cli("eval", older, *EVAL, "--out", tmp_path / "b", "--set", new)
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert f"was trained with path = '{moved['old'].resolve()}'" in shown, shown[-3000:]
    assert FOUND not in shown


def test_the_identity_of_a_hugging_face_base_tells_a_copy_from_another_model(tmp_path):
    """``save_pretrained`` folders: a copy is the same model; a model of the same shapes and
    other weights is not, said by the file that differs."""
    from wmtp.models.descriptions import base_identity, identity_difference

    torch.manual_seed(0)
    tiny_hf_llama(vocab_size=BYTE_IDS).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    torch.manual_seed(1)
    tiny_hf_llama(vocab_size=BYTE_IDS).save_pretrained(tmp_path / "b")
    first = base_identity(tmp_path / "a")
    assert first["format"] == "hf" and "config.json" in first["files"]
    assert identity_difference(first, base_identity(tmp_path / "copy")) is None
    said = identity_difference(first, base_identity(tmp_path / "b"))
    assert said == "its model.safetensors holds other bytes than the base's, of the same size"
