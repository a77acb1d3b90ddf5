"""``wmtp export`` of a LoRA checkpoint that holds its adapters in the sharded DCP ``state/``
alone (no ``lora.safetensors``), after the base model moved: the run recorded the base's
identity (``inputs.json``), so ``--set model.policy.path=NEW`` is taken and the export records
that identity (``made_from.bases``), as for a checkpoint with consolidated adapters; another
model of the same shapes, given at NEW or put at the old path, is refused where the path was set,
exit 2. Real parts: a Meta-format base, a real LoRA run over it, the CLI in a subprocess."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from safetensors.torch import load_file

from tests.export.export_helpers import train
from tests.test_moved_lora_base import FOUND, LORA, SHARD, meta_base, move_away
from tests.train.train_helpers import TINY, cli

pytestmark = [pytest.mark.minutes(1), pytest.mark.slow]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """A LoRA run over a Meta base whose checkpoint keeps its adapters in ``state/`` alone (its
    ``lora.safetensors`` kept aside, to compare); the base then moved to ``new``, and at
    ``other`` another model of the same shapes."""
    root = tmp_path_factory.mktemp("sharded_moved_base")
    base = meta_base(root / "models" / "base", seed=0)
    run = train(root / "lora", TINY, f"model.policy.path='{base}'", LORA, "training.lr=1e-2")
    step = run / "checkpoints" / "step-3"
    adapters = shutil.move(step / "lora.safetensors", root / "lora.safetensors")
    assert (step / "state" / ".metadata").is_file()
    new, other = move_away(base, root)
    return {"root": root, "run": run, "adapters": adapters, "old": base, "new": new,
            "other": other}  # fmt: skip


def test_the_moved_base_is_taken_and_the_export_records_it(sharded):
    """Was refused: the adapters read from ``state/`` lost their run's record of the base, so any
    path but the one they trained over was, whatever model it held."""
    out = sharded["root"] / "apart"
    new = f"model.policy.path='{sharded['new']}'"
    code, shown = cli("export", sharded["run"], "--to", "wmtp", "--no-merge-lora", "--out", out,
                      "--no-progress", "--set", new)  # fmt: skip
    assert code == 0, shown[-3000:]
    assert shown.count(FOUND) == 1, shown[-3000:]
    recorded = json.loads((sharded["run"] / "inputs.json").read_text())["model.policy.path"]
    marker = json.loads((out / "wmtp_export.json").read_text())
    assert marker["made_from"]["bases"] == {"model.policy.path": recorded}
    written, trained = load_file(out / "lora.safetensors"), load_file(sharded["adapters"])
    assert written.keys() == trained.keys()
    assert all((written[k] == trained[k]).all() for k in trained)


@pytest.mark.parametrize("where", ["new", "old"])
def test_another_model_of_the_same_shapes_is_refused_where_the_path_was_set(sharded, where):
    """At NEW, given with ``--set``; or put where the base was (was exported over, exit 0)."""
    out, other = sharded["root"] / f"no-{where}", sharded["other"]
    given = ["--set", f"model.policy.path='{other}'"] if where == "new" else []
    if where == "old":
        shutil.copytree(other, sharded["old"])
    try:
        code, shown = cli("export", sharded["run"], "--to", "hf", "--out", out, "--no-progress",
                          *given)  # fmt: skip
    finally:
        shutil.rmtree(sharded["old"], ignore_errors=True)
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    recipe = sharded["run"] / "checkpoints" / "step-3" / "recipe.toml"
    at = re.escape(f"--set {given[1]}") if given else re.escape(str(recipe)) + r":\d+:\d+"
    path = other if where == "new" else sharded["old"]
    said = f": model.policy.path: '{path}' is not the base model the LoRA adapters in "
    assert re.search(at + re.escape(said), shown), shown[-3000:]
    assert f"its {SHARD} holds other bytes than the base's" in shown, shown[-3000:]
    assert not out.exists() and FOUND not in shown


def test_without_the_new_place_it_says_how_to_give_it(sharded):
    code, shown = cli("export", sharded["run"], "--to", "hf", "--out", sharded["root"] / "none",
                      "--no-progress")  # fmt: skip
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert f"model.policy.path: '{sharded['old']}': the base model that the LoRA adapters" in shown
    assert "(--set model.policy.path=NEW)" in shown, shown[-3000:]
