"""A rehearsal of the production recipes, as written, through the real CLI.

A new user with Meta's MTP directory, the Sheared-LLaMA critic and a processed dataset in the
documented layouts runs ``recipes/*.toml`` unchanged. Here the inputs are tiny stand-ins in those
layouts (``conftest.py``), and every recipe runs in a subprocess of ``python -m wmtp.cli`` with
the working directory the recipes' relative paths start from. The only overrides are the ones in
the table :data:`OVERRIDES`: sizes, device, batch and step counts. A test holds the table to those
keys, and every run's resolved recipe is compared with the recipe file: nothing else changed.

The chains: ``critic.toml`` -> ``verifiable.toml`` -> ``evaluation.toml`` (which names
``runs/verifiable/latest``), ``ref_tuning.toml`` -> ``rho1.toml``, ``baseline.toml`` ->
``wmtp eval runs/baseline/latest``. Each run is a module-scoped fixture, so a recipe that loads
its predecessor's run fails (as a setup error naming the predecessor) when that run did.

``WMTP_REHEARSAL_DEVICE=cuda python -m pytest tests/rehearsal`` runs the same on a GPU, where the
recipes' ``attention = "auto"`` picks the GPU's backend (on the CPU it resolves to sdpa);
and the whole chain runs again on two processes per command (``--nproc-per-node 2``: FSDP2 over
gloo on the CPU; ``WMTP_REHEARSAL_NPROC=1,2`` on a machine with two GPUs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.rehearsal.conftest import DATA_DIR, DEVICE, HF_DIR, META_DIR, RECIPES, Workdir
from wmtp.recipe import diff_recipes, load_recipe

pytestmark = pytest.mark.minutes(1.5)

STEPS = 2
"""Optimizer steps of every training run (a checkpoint after each)."""

# Overrides, per recipe: only sizes, device, batch and step counts. Nothing names a path, an
# attention backend, a kind or the data: the recipes' own values stand.
SIZES = (
    "model.policy.flavour='tiny'",  # the stand-in Meta model's sizes (4 heads as base.toml says)
    "data.max_length=256",  # within the tiny flavour's 512 positions (base.toml: 2048)
)
CRITIC_SIZES = ("model.critic.flavour='tiny'",)  # the stand-in Hugging Face critic's sizes
REFERENCE_SIZES = ("model.reference.flavour='tiny'",)  # rho1's reference: the same Meta model
ON_DEVICE = (f"parallel.device='{DEVICE}'",)
BATCH = ("training.micro_batch_size=2", "training.grad_accum_steps=1")
STEP_COUNTS = (
    f"training.max_steps={STEPS}",
    "training.schedule.warmup_steps=1",  # base.toml's 100 would exceed max_steps
    "training.eval_every=1",
    "training.checkpoint_every=1",
)
EVALUATION = (
    "evaluation.max_problems=2",
    "evaluation.n_samples=2",
    "evaluation.k=[1, 2]",
    "evaluation.max_new_tokens=24",
)

OVERRIDES: dict[str, tuple[str, ...]] = {
    "critic.toml": (*SIZES, *CRITIC_SIZES, *ON_DEVICE, *BATCH, *STEP_COUNTS),
    "verifiable.toml": (*SIZES, *CRITIC_SIZES, *ON_DEVICE, *BATCH, *STEP_COUNTS),
    "ref_tuning.toml": (*SIZES, *ON_DEVICE, *BATCH, *STEP_COUNTS),
    "rho1.toml": (*SIZES, *REFERENCE_SIZES, *ON_DEVICE, *BATCH, *STEP_COUNTS),
    "baseline.toml": (*SIZES, *ON_DEVICE, *BATCH, *STEP_COUNTS),
    "evaluation.toml": (*SIZES, *ON_DEVICE, *EVALUATION),
}
EVAL_OF_A_RUN = (*ON_DEVICE, *EVALUATION)
"""``wmtp eval runs/<experiment>/latest``: the run's own recipe already has the sizes."""

ALLOWED_KEYS = {
    "sizes": {
        "model.policy.flavour",
        "model.critic.flavour",
        "model.reference.flavour",
        "data.max_length",
        "evaluation.max_problems",
        "evaluation.n_samples",
        "evaluation.k",
        "evaluation.max_new_tokens",
    },
    "device": {"parallel.device"},
    "batch": {"training.micro_batch_size", "training.grad_accum_steps"},
    "steps": {
        "training.max_steps",
        "training.schedule.warmup_steps",
        "training.eval_every",
        "training.checkpoint_every",
    },
}


def keys_of(overrides: tuple[str, ...]) -> set[str]:
    return {item.split("=", 1)[0] for item in overrides}


def set_args(overrides: tuple[str, ...]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


# --------------------------------------------------------------------------- checks of a run


def recipe_file(name: str) -> Path:
    return RECIPES / name


def assert_only_overrides_changed(name: str, resolved: Path) -> None:
    """The run's resolved recipe differs from the recipe file only in the overridden keys."""
    written = load_recipe(recipe_file(name)).recipe
    ran = load_recipe(resolved).recipe
    changed = {change.key for change in diff_recipes(written, ran)}
    assert changed <= keys_of(OVERRIDES[name]), (
        f"{resolved} differs from {name} beyond the overrides: "
        f"{sorted(changed - keys_of(OVERRIDES[name]))}"
    )


def assert_trained(work: Workdir, name: str) -> Path:
    """``runs/<experiment>/latest`` holds a checkpoint of every step, a finite loss at the last,
    and the recipe as written but for the overrides; returns the run directory."""
    run = work.latest(Path(name).stem)
    assert (run / "recipe.toml").is_file(), f"{name}: no run directory at {run}"
    for step in range(1, STEPS + 1):
        checkpoint = run / "checkpoints" / f"step-{step}"
        weights = {p.name for p in checkpoint.glob("*.safetensors")}
        assert weights & {"model.safetensors", "lora.safetensors"}, (
            f"{name}: {checkpoint} holds no weights ({sorted(weights)})"
        )
        trainer = json.loads((checkpoint / "trainer.json").read_text())
        assert trainer["world_size"] == work.nproc, f"{name}: {checkpoint} {trainer}"
    losses = [
        m["loss"]
        for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if m.get("step") == STEPS and "loss" in m
    ]
    assert losses and math.isfinite(losses[-1]), f"{name}: no finite loss at step {STEPS}"
    assert_only_overrides_changed(name, run / "recipe.toml")
    return run


def assert_evaluated(work: Workdir, run: Path) -> dict:
    """``eval/step-<last>/humaneval/summary.json`` has pass@1 and pass@2 of HumanEval over every
    sample generated, on problems the run did not train on (the stand-in data names no HumanEval
    problem, so all 164 are unseen)."""
    out_dir = run / "eval" / f"step-{STEPS}" / "humaneval"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["split"]["unseen"] == 164 and summary["split"]["seen"] == 0, summary["split"]
    result = summary["results"]["unseen"]
    assert set(result["pass_at_k"]) == {"1", "2"}, result["pass_at_k"]
    assert all(0.0 <= p <= 1.0 for p in result["pass_at_k"].values())
    assert result["problems"] == 2 and sum(result["statuses"].values()) == 4, summary
    assert (out_dir / "samples.jsonl").is_file() and (out_dir / "problems.jsonl").is_file()
    assert summary["generation"].get("ranks", 1) == work.nproc, summary["generation"]
    settings = summary["settings"]
    assert settings["device"].split(":")[0] == DEVICE, settings  # cpu, cuda:0
    if DEVICE == "cpu":  # the recipes' attention = "auto" on a CPU
        assert settings["attention"] == "sdpa", settings
    return summary


def train(work: Workdir, name: str) -> Path:
    """``wmtp run recipes/NAME`` with its overrides; the run directory it left. A run that
    failed once is not tried again by the next test that needs it: its failure is repeated."""
    if name in work.failed:
        pytest.fail(f"{name} failed earlier in this module:\n{work.failed[name]}", pytrace=False)
    try:
        work.wmtp("run", str(recipe_file(name)), *work.launch, *set_args(OVERRIDES[name]))
        return assert_trained(work, name)
    except (pytest.fail.Exception, AssertionError) as exc:
        work.failed[name] = str(exc)
        raise


# --------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def critic_run(workdir) -> Path:
    return train(workdir, "critic.toml")


@pytest.fixture(scope="module")
def verifiable_run(workdir, critic_run) -> Path:
    """verifiable.toml weights by ``runs/critic/latest``: the critic run above."""
    return train(workdir, "verifiable.toml")


@pytest.fixture(scope="module")
def ref_tuning_run(workdir) -> Path:
    return train(workdir, "ref_tuning.toml")


@pytest.fixture(scope="module")
def rho1_run(workdir, ref_tuning_run) -> Path:
    """rho1.toml's reference is ``runs/ref_tuning/latest``: the run above."""
    return train(workdir, "rho1.toml")


@pytest.fixture(scope="module")
def baseline_run(workdir) -> Path:
    return train(workdir, "baseline.toml")


# --------------------------------------------------------------------------- the tests


def test_overrides_are_only_sizes_device_batch_and_steps():
    allowed = set().union(*ALLOWED_KEYS.values())
    for name, overrides in OVERRIDES.items():
        assert recipe_file(name).is_file(), name
        assert keys_of(overrides) <= allowed, (name, sorted(keys_of(overrides) - allowed))
    assert keys_of(EVAL_OF_A_RUN) <= allowed


@pytest.mark.slow
def test_stand_ins_load_with_wmtp_readers(workdir):
    """Tokenizer, Meta directory, Hugging Face directory and dataset, read as wmtp reads them."""
    from wmtp.data.dataset import JsonlDataset
    from wmtp.data.tokenizers import load_tokenizer
    from wmtp.models.checkpoint import from_pretrained, read_checkpoint

    root = workdir.root
    tokenizer = load_tokenizer("sentencepiece", root / META_DIR / "tokenizer.model")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
    code = "def f(x):\n    return x  # ü\n"
    assert tokenizer.decode(tokenizer.encode(code)) == code  # byte fallback: any text

    policy = from_pretrained(root / META_DIR, dtype="float32", attention="auto")
    assert policy.args.n_future_tokens == 4
    assert policy.args.vocab_size == tokenizer.vocab_size  # params.json says -1

    critic = read_checkpoint(root / HF_DIR)
    assert critic.format == "hf" and critic.args.vocab_size == tokenizer.vocab_size
    assert (critic.args.dim, critic.args.hidden_dim) == (policy.args.dim, policy.args.hidden_dim)

    data = JsonlDataset(root / DATA_DIR / "train.jsonl", tokenizer, max_length=256)
    assert not data.notes, data.notes  # train_metadata.json agrees, lengths under this tokenizer
    assert data.fits.all(), "every row fits data.max_length"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OVERRIDES))
def test_recipe_validates_with_its_overrides(workdir, name):
    workdir.wmtp("validate", str(recipe_file(name)), *set_args(OVERRIDES[name]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline.toml", "critic.toml"])
def test_validate_data_reads_the_processed_dataset(workdir, name):
    """``--data`` reads the data as training does: sequences (baseline) and pairs (critic)."""
    workdir.wmtp("validate", "--data", str(recipe_file(name)), *set_args(OVERRIDES[name]))


@pytest.mark.slow
def test_critic_then_verifiable(critic_run, verifiable_run):
    ran = load_recipe(verifiable_run / "recipe.toml").recipe
    assert ran.model.critic.checkpoint == "runs/critic/latest"  # as verifiable.toml says


@pytest.mark.slow
def test_ref_tuning_then_rho1(ref_tuning_run, rho1_run):
    ran = load_recipe(rho1_run / "recipe.toml").recipe
    assert ran.model.reference.checkpoint == "runs/ref_tuning/latest"  # as rho1.toml says


@pytest.mark.slow
def test_evaluation_recipe_evaluates_the_verifiable_run(workdir, verifiable_run):
    """evaluation.toml names ``runs/verifiable/latest``; its results go to that run's
    eval/step-N/."""
    name = "evaluation.toml"
    workdir.wmtp("run", str(recipe_file(name)), *workdir.launch, *set_args(OVERRIDES[name]))
    assert_evaluated(workdir, verifiable_run)


@pytest.mark.slow
def test_baseline_then_eval(workdir, baseline_run):
    workdir.wmtp(
        "eval", "runs/baseline/latest", "--no-progress", *workdir.launch, *set_args(EVAL_OF_A_RUN)
    )
    assert_evaluated(workdir, baseline_run)
