"""Inputs a recipe reaches through other files, said where the user can act: at the recipe's own
key (file:line), exit 2, no traceback. A LoRA checkpoint whose base model has gone is said at
the recipe's ``model.policy.path``, naming the checkpoint and the fix; a damaged file of the
cached HumanEval build at ``data.cache_dir``, naming the file, its line and how to build it
again. Real parts: a real LoRA run over a real base, a real HumanEval build, the CLI in a
subprocess."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from tests.export.export_helpers import train
from tests.train.train_helpers import REPO, TINY, cli

pytestmark = pytest.mark.minutes(2)


def line_of(file: Path, text: str) -> int:
    return next(n for n, line in enumerate(file.read_text().splitlines(), 1) if line == text)


# A LoRA checkpoint whose base model has gone -----------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a LoRA run's directory, the base model it trained over): random tiny weights saved as a
    wmtp model directory, then three steps of LoRA over them, as the export tests train."""
    import torch

    from wmtp.models.args import flavour
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    root = tmp_path_factory.mktemp("lora_base_gone")
    torch.manual_seed(0)
    base = save_wmtp(
        LlamaMTP(flavour("tiny").with_vocab(259), attention="sdpa"), root / "models" / "base"
    )
    lora = "model.policy.lora={rank = 4, alpha = 16.0}"
    return train(root / "lora", TINY, f"model.policy.path='{base}'", lora), base


@contextlib.contextmanager
def moved_away(path: Path):
    """``path`` moved beside itself while the block runs (where it went, yielded), then back."""
    moved = path.with_name(f"{path.name}-moved")
    shutil.move(path, moved)
    try:
        yield moved
    finally:
        shutil.move(moved, path)


def recipe_over(tmp_path: Path, pipeline: str, run: Path, base: Path) -> Path:
    """A recipe whose policy is the LoRA run's adapters over their base, as base.toml and
    evaluation.toml name theirs."""
    recipe = tmp_path / f"{pipeline}.toml"
    recipe.write_text(
        f'extends = "{TINY}"\n\n'
        f'[experiment]\nname = "over-lora"\npipeline = "{pipeline}"\n'
        f'runs_dir = "{tmp_path / "runs"}"\n\n'
        f'[model.policy]\npath = "{base}"\nlora = {{ rank = 4, alpha = 16.0 }}\n'
        f'checkpoint = "{run}"\n'
    )
    return recipe


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["evaluation", "baseline"])
def test_a_lora_checkpoint_whose_base_is_gone_is_said_at_the_recipes_base_key(
    lora_run, tmp_path, pipeline
):
    """Was "no such directory (pretrained weights)" alone: nothing said the checkpoint's
    adapters need it, nor what to do. ``wmtp run`` and ``validate --env`` refuse; plain
    ``validate`` notes it (a missing input), in the same words; the fix it names works."""
    run, base = lora_run
    recipe = recipe_over(tmp_path, pipeline, run, base)
    (step,) = (run / "checkpoints").glob("step-*")
    line = line_of(recipe, f'path = "{base}"')
    at = f"{recipe}:{line}:1: model.policy.path: '{base}': "
    said = f"{at}the base model that the LoRA adapters in {step} apply to: no such directory"
    fix = "put it back there, or make that path a link to where it is now"
    with moved_away(base) as moved:
        for command in (["run", "--dry-run"], ["validate", "--env"]):
            code, shown = cli(*command, recipe)
            assert code == 2 and "Traceback" not in shown, shown[-3000:]
            assert said in shown and fix in shown, shown[-3000:]
        code, shown = cli("validate", recipe)
        assert code == 0 and f"note: input not found: {said}" in shown, shown[-3000:]
        base.symlink_to(moved, target_is_directory=True)
        try:
            code, shown = cli("validate", "--env", recipe)
        finally:
            base.unlink()
        assert code == 0 and "the base model that" not in shown, shown[-3000:]


# A damaged file of the cached HumanEval build ----------------------------------------------

FRACTION = 0.2
"""Not the repository's split (0.1): a build of this test's own."""


@pytest.fixture
def humaneval_cache(tmp_path) -> Path:
    """A ``data.cache_dir`` holding a real build of HumanEval, made by the builder from the
    labels the repository's cache keeps (built there first if it is not: as every tiny run)."""
    from wmtp.data.humaneval import VERSION, ensure_humaneval

    repo_cache = REPO / "storage" / "datasets" / "humaneval"
    ensure_humaneval(repo_cache, progress=False)
    cache = tmp_path / "humaneval"
    cache.mkdir()
    shutil.copy(repo_cache / f"labelled-v{VERSION}.jsonl", cache)
    ensure_humaneval(cache, heldout_fraction=FRACTION, progress=False)
    return cache


def cut_short(file: Path, number: int) -> None:
    """Line ``number`` of ``file`` cut in the middle, as a copy that stopped early leaves it."""
    lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[number - 1] = lines[number - 1][:40] + "\n"
    file.write_text("".join(lines), encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["heldout.jsonl", "train.jsonl"])
def test_a_damaged_humaneval_build_is_said_at_data_cache_dir(humaneval_cache, tmp_path, damaged):
    """Its held-out file was said at ``data.split.heldout_path "(the default)"``, a key the
    recipe never set and that does not apply to HumanEval; its train file without the way to
    build it again (``validate --data``) or without the recipe's key at all (``run``)."""
    from wmtp.data.humaneval import built_dir

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'extends = "{TINY}"\n\n[experiment]\nruns_dir = "{tmp_path / "runs"}"\n\n'
        f'[data]\ncache_dir = "{humaneval_cache}"\nsplit = {{ heldout_fraction = {FRACTION} }}\n'
    )
    built = built_dir(humaneval_cache, FRACTION)
    cut_short(built / damaged, 3)
    line = line_of(recipe, f'cache_dir = "{humaneval_cache}"')
    at = f"{recipe}:{line}:1: data.cache_dir: "
    rebuild = f"`wmtp data humaneval {built} --heldout-fraction {FRACTION:g} --force`"
    for command in (["validate", "--data"], ["run"]):
        code, shown = cli(*command, recipe)
        assert code == 2 and "Traceback" not in shown, shown[-3000:]
        assert f"{at}{built / damaged}:3: not valid JSON" in shown, shown[-3000:]
        assert f"the HumanEval dataset built in {built} is damaged" in shown, shown[-3000:]
        assert rebuild in shown and "heldout_path" not in shown, shown[-3000:]
