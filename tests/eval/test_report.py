"""`wmtp report` on two tiny run directories the test writes."""

from __future__ import annotations

import json

import pytest

from wmtp.errors import RunError
from wmtp.eval.report import write_report
from wmtp.eval.run_data import read_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, experiment, *, weighting, head_losses, pass_at_1, with_tensorboard):
    run = root / "runs" / experiment / "20261122-050000-abcdef12"
    (run / "eval").mkdir(parents=True)
    (run / "recipe.toml").write_text(
        f'[experiment]\nname = "{experiment}"\npipeline = "{experiment}"\n\n'
        f'[weighting]\nkind = "{weighting}"\n\n[model.policy]\nn_future_tokens = 2\n'
    )
    with (run / "metrics.jsonl").open("w") as out:
        out.write(json.dumps({"event": "start"}) + "\n")  # no step: not a metric line
        for step in range(1, 6):
            row = {
                "step": step,
                # the trainer's names (wmtp.train.metrics); nested tables flatten with "/"
                "loss": sum(head_losses) / 2 / step,
                "loss/head1": head_losses[0] / step,
                "loss/head2": head_losses[1] / step,
                "lr": 1e-3,
            }
            if weighting == "td":
                row["weight"] = {"mean": 1.0, "std": 0.2 * step, "max": 3.0}
                row["rho1/kept_fraction_head1"] = 0.5
            out.write(json.dumps(row) + "\n")
    if with_tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
        for step in range(1, 6):
            writer.add_scalar("eval/loss_head_1", 5.0 - step / 10, step)
            writer.add_scalar("eval/loss_head_2", 6.0 - step / 10, step)
        writer.close()
    summary = {
        "benchmarks": {
            "humaneval": {
                "pass_at_k": {"1": pass_at_1, "10": min(1.0, 3 * pass_at_1)},
                "problems": 164,
                "samples_per_problem": 10,
            }
        },
        "settings": {"temperature": 0.8},
    }
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def two_runs(tmp_path):
    baseline = make_run(
        tmp_path,
        "baseline",
        weighting="uniform",
        head_losses=(2.0, 3.0),
        pass_at_1=0.1,
        with_tensorboard=True,
    )
    verifiable = make_run(
        tmp_path,
        "verifiable",
        weighting="td",
        head_losses=(1.5, 2.5),
        pass_at_1=0.2,
        with_tensorboard=False,
    )
    return baseline, verifiable


def test_reads_metrics_tensorboard_recipe_and_eval(two_runs):
    record = read_run(two_runs[0])
    assert record.label == "baseline/20261122-050000-abcdef12"
    assert record.scalars["loss/head2"] == [(s, 3.0 / s) for s in range(1, 6)]
    assert record.scalars["eval/loss_head_1"][0] == (1, pytest.approx(4.9))
    assert record.settings["weighting.kind"] == "uniform"
    assert record.settings["model.policy.n_future_tokens"] == 2
    assert record.evals["humaneval"]["pass_at_k"]["1"] == 0.1


def test_report_writes_plots_and_table(two_runs, tmp_path):
    out = tmp_path / "report"
    written = write_report(list(two_runs), out)
    names = sorted(p.name for p in written)
    assert names == ["loss.png", "loss_per_head.png", "pass_at_k.png", "report.md", "weights.png"]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
            assert path.stat().st_size > 5_000
    table = (out / "report.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "run" and "weighting.kind" in header
    assert "humaneval pass@1" in header and "humaneval pass@10" in header
    rows = {
        cells[0]: dict(zip(header, cells, strict=True))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }
    base = rows["baseline/20261122-050000-abcdef12"]
    verif = rows["verifiable/20261122-050000-abcdef12"]
    assert base["weighting.kind"] == "uniform" and verif["weighting.kind"] == "td"
    assert base["steps"] == "5"
    assert float(base["loss/head1"]) == pytest.approx(2.0 / 5)
    assert float(verif["loss/head2"]) == pytest.approx(2.5 / 5)
    assert float(base["loss"]) == pytest.approx(2.5 / 5)
    assert float(base["humaneval pass@1"]) == 10.0 and float(verif["humaneval pass@10"]) == 60.0
    assert base["eval/loss_head_1"] == "4.5" and verif["eval/loss_head_1"] == "–"


def test_report_refuses_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"no metrics\.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "out")


def test_which_tags_count_as_weight_statistics():
    from wmtp.eval.report import _is_weight_stat

    tags = ["weight/mean", "weight/clipped_max", "rho1/kept_fraction_head1", "loss/head1_weighted"]
    tags += ["optim/weight_decay", "lr", "loss"]
    assert [t for t in tags if _is_weight_stat(t)] == tags[:3]
