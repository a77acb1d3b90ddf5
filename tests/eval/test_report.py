"""`wmtp report` on real tiny runs of every pipeline: which series share a panel, the PNGs, the
headline table and the step it reports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.eval.test_eval_command import invoke, summary_of
from tests.eval.tiny_runs import critic, policy, reference, train
from tests.paused import PausedCommand
from wmtp.errors import RunError
from wmtp.eval.figures import FigureSpec, Line, Panel, draw
from wmtp.eval.questions import QUESTIONS, Shown
from wmtp.eval.report import display_labels, write_report
from wmtp.eval.run_data import read_run, read_runs
from wmtp.eval.table import percent

pytestmark = pytest.mark.slow  # five training runs and three evaluations: about 20 s

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ("baseline", "verifiable", "ref_tuning", "rho1", "critic")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two steps of each pipeline; baseline evaluated at both checkpoints, verifiable at its last."""
    tmp = tmp_path_factory.mktemp("runs")
    found = {"critic": train(tmp, "critic", "critic", critic(), steps=2)}
    found["baseline"] = train(tmp, "baseline", "baseline", policy(), steps=2)
    td = critic(found["critic"]) + '[weighting]\nkind = "td"\n'
    found["verifiable"] = train(tmp, "verifiable", "verifiable", policy() + td, steps=2)
    found["ref_tuning"] = train(tmp, "ref_tuning", "ref_tuning", policy(), steps=2)
    keep = reference(found["ref_tuning"]) + '[weighting]\nkind = "rho1"\nk_percent = 0.4\n'
    found["rho1"] = train(tmp, "rho1", "rho1", policy() + keep, steps=2)
    for target in (
        found["baseline"] / "checkpoints" / "step-1",
        found["baseline"],
        found["verifiable"],
    ):
        result = invoke("eval", target, "--no-progress")
        assert result.exit_code == 0, result.output
    return {name: found[name] for name in NAMES}


@pytest.fixture(scope="module")
def figures(runs) -> dict:
    records = [read_run(path) for path in runs.values()]
    shown = [
        Shown(r, label, f"C{i}") for i, (r, label) in enumerate(zip(records, NAMES, strict=True))
    ]
    specs = (question(shown) for question in QUESTIONS)
    return {spec.file: spec for spec in specs if spec is not None}


def panel(figures, file: str, title: str) -> Panel:
    (found,) = [p for p in figures[file].panels if p.title == title]
    return found


def lines_by_run(found: Panel) -> dict[str, Line]:
    return {line.label: line for line in found.lines}


def test_labels_are_the_experiment_names(runs):
    assert display_labels([read_run(path) for path in runs.values()]) == list(NAMES)


def test_next_token_cross_entropy_puts_only_comparable_series_together(runs, figures):
    """Each pipeline's head-1 loss with every token weighted 1, and no critic."""
    training = lines_by_run(panel(figures, "cross_entropy.png", "training batches"))
    plain_ce = {
        "baseline": "loss/head1",
        "verifiable": "loss/head1_unweighted",  # not its weighted objective
        "ref_tuning": "loss/head1",
        "rho1": "loss/head1_all_tokens",  # not its kept-token objective
    }
    assert set(training) == set(plain_ce)
    for name, tag in plain_ce.items():
        assert training[name].points == read_run(runs[name]).scalars[tag], name
    heldout = panel(
        figures, "cross_entropy.png", "held-out split (every training.eval_every steps)"
    )
    assert {name: line.points for name, line in lines_by_run(heldout).items()} == {
        name: read_run(runs[name]).scalars["eval/loss/head1"] for name in plain_ce
    }
    assert "left out (no cross-entropy logged): critic" in figures["cross_entropy.png"].caption


def test_other_questions_keep_their_own_runs(figures):
    per_head = panel(figures, "cross_entropy_per_head.png", "head 2 (predicts token t+2), held-out")
    assert set(lines_by_run(per_head)) == {"baseline", "verifiable", "rho1"}  # ref_tuning: 1 head
    weights = figures["token_weights.png"]
    for found in weights.panels:
        runs_drawn = {line.run for line in found.lines}
        expected = {"rho1"} if found.title.startswith("Rho-1") else {"verifiable"}
        assert runs_drawn == expected, found.title
    critic_runs = {line.run for found in figures["critic.png"].panels for line in found.lines}
    assert critic_runs == {"critic"}
    speed = lines_by_run(panel(figures, "throughput.png", "training throughput"))
    assert set(speed) == set(NAMES)


def test_pass_at_k_by_step_with_standard_errors(runs, figures):
    pass_at_1 = panel(figures, "pass_at_k.png", "humaneval: pass@1 on unseen problems")
    drawn = lines_by_run(pass_at_1)
    assert set(drawn) == {"baseline", "verifiable"}
    results = [
        summary_of(runs["baseline"] / "eval" / f"step-{n}")["results"]["unseen"] for n in (1, 2)
    ]
    assert drawn["baseline"].points == [
        (n, r["pass_at_k"]["1"]) for n, r in zip((1, 2), results, strict=True)
    ]
    assert drawn["baseline"].errors == tuple(r["pass_at_k_stderr"]["1"] for r in results)
    assert [step for step, _ in drawn["verifiable"].points] == [2]
    assert pass_at_1.note == "not evaluated: ref_tuning, rho1"  # a critic has no pass@k
    assert pass_at_1.axis == "percent"


def test_the_pngs_have_their_panels_and_no_empty_axes(runs, figures, tmp_path):
    report = write_report(list(runs.values()), tmp_path)
    written = sorted(p.name for p in report.files)
    assert written == sorted([*figures, "report.md"])
    for name, spec in figures.items():
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, name
        drawn = draw(spec, tmp_path / f"again-{name}")
        assert [ax.get_title() for ax in drawn.axes] == [p.title for p in spec.panels]
        assert drawn.get_suptitle().startswith(spec.title)
        for ax, drawn_panel in zip(drawn.axes, spec.panels, strict=True):
            assert ax.lines or ax.texts, f"{name}: {ax.get_title()} is empty"
            assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel(), ax.get_title()
            legend = {t.get_text() for t in ax.get_legend().get_texts()} if ax.lines else set()
            expected = {line.label for line in drawn_panel.lines}
            expected |= {drawn_panel.reference[1]} if drawn_panel.reference else set()
            assert legend == expected, (name, ax.get_title())  # only runs drawn there


def headline_rows(report_md: str) -> dict[str, dict[str, str]]:
    lines = [line for line in report_md.splitlines() if line.startswith("|")]
    table = lines[: next(i for i, line in enumerate(lines[1:], 1) if line.startswith("| step"))]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_headline_table(runs, tmp_path):
    write_report(list(runs.values()), tmp_path)
    rows = headline_rows((tmp_path / "report.md").read_text())
    assert list(rows) == list(NAMES)
    heads = {name: row["heads trained"] for name, row in rows.items()}
    assert heads == {
        "baseline": "2",
        "verifiable": "2",
        "ref_tuning": "1",  # one head, though its recipe says n_future_tokens = 2
        "rho1": "2",
        "critic": "– (trains model.critic)",
    }
    last = summary_of(runs["baseline"] / "eval" / "step-2")["results"]["unseen"]
    expected = percent(last["pass_at_k"]["1"], last["pass_at_k_stderr"]["1"])
    assert rows["baseline"]["humaneval pass@1 (%)"] == expected
    assert rows["baseline"]["evaluated"].startswith("step 2 (newest): humaneval: 3 unseen")
    assert rows["rho1"]["humaneval pass@1 (%)"] == "not evaluated"
    assert rows["critic"]["humaneval pass@1 (%)"] == "– (no policy)"
    assert rows["critic"]["held-out CE (nats/token)"] == "–"
    ce = read_run(runs["rho1"]).scalars["eval/loss/head1"][-1]
    assert rows["rho1"]["held-out CE (nats/token)"] == f"{ce[1]:.3f} (step {ce[0]})"
    tokens = sum(v for _, v in read_run(runs["baseline"]).scalars["tokens"])
    assert rows["baseline"]["tokens seen"] in (f"{tokens:.0f}", f"{tokens / 1e3:.3g}k")


def test_step_option_reports_that_checkpoint(runs, tmp_path):
    result = invoke("report", *runs.values(), "--out", tmp_path, "--step", "1")
    assert result.exit_code == 0, result.output
    assert "baseline: pass@k from step 1" in result.flat
    assert "verifiable: pass@k not evaluated at step 1 (evaluated: 2)" in result.flat
    assert "critic: pass@k none (no policy trained)" in result.flat
    rows = headline_rows((tmp_path / "report.md").read_text())
    first = summary_of(runs["baseline"] / "eval" / "step-1")["results"]["unseen"]
    expected = percent(first["pass_at_k"]["1"], first["pass_at_k_stderr"]["1"])
    assert rows["baseline"]["humaneval pass@1 (%)"] == expected
    assert rows["verifiable"]["evaluated"] == "not evaluated at step 1 (evaluated: 2)"


def test_a_step_no_run_was_evaluated_at_or_a_file_as_out_is_an_error(runs, tmp_path):
    """Exit 2 and a message that lists the evaluated steps, nothing written."""
    result = invoke("report", runs["baseline"], runs["verifiable"], "--out", tmp_path / "r",
                    "--step", "999")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--step 999: no run was evaluated at that step" in result.flat
    assert f"{runs['baseline']}: 1, 2" in result.flat and not (tmp_path / "r").exists()
    assert invoke("report", runs["baseline"], "--out", tmp_path, "--step", "-1").exit_code == 2
    (tmp_path / "afile").write_text("mine")
    for out, said in (
        (tmp_path / "afile", "afile: exists and is not a folder"),
        (tmp_path / "afile" / "sub", "afile is not a folder, so no folder can be made in it"),
    ):
        result = invoke("report", runs["baseline"], "--out", out)
        assert result.exit_code == 2 and said in result.flat, result.output
        assert "Traceback" not in result.output
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_report_replaces_an_earlier_report_whole_and_nothing_a_user_wrote(runs, tmp_path):
    """The same --out again: the earlier report is replaced whole (a figure the new one does not
    draw is gone). A folder holding a file the report did not write, an edited report, or a
    folder that is no report are refused (exit 2) and kept as they were."""
    out = tmp_path / "compare"
    assert invoke("report", *runs.values(), "--out", out).exit_code == 0
    assert (out / "critic.png").is_file()
    marker = json.loads((out / "wmtp_report.json").read_text())
    assert marker["written_by"] == "wmtp report" and "report.md" in marker["files"]

    alone = invoke("report", runs["baseline"], "--out", out)
    assert alone.exit_code == 0, alone.output
    assert not (out / "critic.png").exists() and "baseline" in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare"]

    (out / "notes.md").write_text("mine")
    refused = invoke("report", runs["baseline"], "--out", out)
    assert refused.exit_code == 2 and "files it did not write (notes.md)" in refused.flat
    (out / "notes.md").unlink()
    with (out / "report.md").open("a") as f:
        f.write("my notes\n")
    refused = invoke("report", runs["baseline"], "--out", out)
    assert refused.exit_code == 2 and "changed after it wrote them (report.md" in refused.flat
    assert (out / "report.md").read_text().endswith("my notes\n")

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own report")
    refused = invoke("report", runs["baseline"], "--out", mine)
    assert refused.exit_code == 2 and "holds no wmtp_report.json" in refused.flat
    assert [p.read_text() for p in mine.iterdir()] == ["my own report"]
    assert "Traceback" not in refused.output


def test_a_second_report_into_a_folder_being_written_is_refused(runs, tmp_path):
    """Two `wmtp report` into one --out at once: the second is refused (exit 2, the first's pid)
    and the first's report is whole, not a mix of both."""
    out = tmp_path / "compare"
    argv = ["report", runs["baseline"], runs["verifiable"], "--out", out]
    first = PausedCommand("wmtp.eval.report", "_drawn", argv, tmp_path / "s")
    first.wait_until_paused()

    second = invoke("report", runs["rho1"], "--out", out)
    assert second.exit_code == 2, second.output
    assert f"--out {out}: another wmtp report writes this folder now (pid {first.pid} on " \
        in second.flat and "Traceback" not in second.output  # fmt: skip
    assert not out.exists()

    code, said = first.go()
    assert code == 0, said
    text = (out / "report.md").read_text()
    assert "verifiable" in text and "rho1" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare", "s"]


def test_constant_and_zero_series_are_drawn_as_such(tmp_path):
    flat = Panel("kept", "tokens", (Line("run", "C0", [(1, 0.4), (2, 0.4), (3, 0.4)]),))
    zero = Panel(
        "pass@1",
        "pass@1 (% of problems)",
        (Line("run", "C0", [(5, 0.0)], errors=(0.0,)),),
        axis="percent",
        note="not evaluated: other",
    )
    drawn = draw(FigureSpec("x.png", "t", (flat, zero)), tmp_path / "x.png")
    flat_ax, zero_ax = drawn.axes
    low, high = flat_ax.get_ylim()
    assert math.isclose(low, 0.0, abs_tol=1e-12) and math.isclose(high, 0.8)  # not ±5%
    assert "constant: 0.4" in [t.get_text() for t in flat_ax.texts]
    assert zero_ax.get_ylim() == pytest.approx((-0.23, 11.5))  # a zero score sits on a real axis
    assert "not evaluated: other" in [t.get_text() for t in zero_ax.texts]


def test_report_refuses_an_empty_directory_and_notes_the_old_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"no metrics\.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    old = tmp_path / "old"
    (old / "eval").mkdir(parents=True)
    (old / "eval" / "summary.json").write_text(json.dumps({"benchmarks": {}}))
    (old / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert "older wmtp's layout" in read_run(old).notes[0]


def report_md(*args) -> str:
    """``wmtp report ARGS``; its report.md (the last argument after ``--out`` is the folder)."""
    result = invoke("report", *args)
    assert result.exit_code == 0, result.output
    out = Path(args[list(map(str, args)).index("--out") + 1])
    return (out / "report.md").read_text()


def test_a_torn_last_line_of_metrics_is_left_out_and_a_repeated_step_drawn_once(runs, tmp_path):
    """A crash while writing metrics.jsonl leaves half a line: the report reads the rest and says
    so; a step logged again (after a resume) is one point, its last value."""
    run = tmp_path / "runs" / "baseline" / "crashed"
    shutil.copytree(runs["baseline"], run)
    again = {"step": 2, "eval/loss/head1": 4.25, "eval/loss/head2": 4.5}
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write(json.dumps(again) + "\n" + '{"step": 3, "loss": 5.5')
    text = report_md(run, "--out", tmp_path / "report")
    assert "metrics.jsonl: its last line (" in text and "is torn" in text
    ce = read_run(run).scalars["eval/loss/head1"]
    assert [step for step, _ in ce] == [1, 2] and ce[-1] == (2, 4.25)
    assert "| 4.250 (step 2) |" in text  # the headline's held-out CE: the value logged last
    assert "held-out cross-entropy at its last step: head 1: 4.250, head 2: 4.500" in text
    (run / "metrics.jsonl").write_text('{"step": 1, "loss"\n' + json.dumps(again) + "\n")
    result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 2 and "metrics.jsonl:1: not valid JSON" in result.flat


def shown_runs(**paths: Path) -> list[Shown]:
    return [Shown(read_run(path), label, f"C{i}") for i, (label, path) in enumerate(paths.items())]


@pytest.fixture(scope="module")
def other_seed(runs) -> Path:
    """A baseline run of seed 1 (another held-out split of the same file), evaluated with
    n_samples = 4 on 4 unseen problems (the others: 2 samples of 3 problems)."""
    run = train(runs["baseline"].parents[2], "seed1", "baseline", policy(), steps=2, seed=1)
    settings = ("--set", "evaluation.n_samples=4", "--set", "evaluation.max_problems=4")
    result = invoke("eval", run, "--no-progress", *settings)
    assert result.exit_code == 0, result.output
    return run


def test_held_out_cross_entropy_of_other_held_out_data_is_said_not_comparable(
    runs, other_seed, tmp_path
):
    alike = report_md(*runs.values(), "--out", tmp_path / "alike")
    assert "Warning" not in alike  # one data file, one split, one way of evaluating
    text = report_md(runs["baseline"], runs["verifiable"], other_seed, "--out", tmp_path / "r")
    warning = (
        "**Warning: held-out cross-entropy NOT comparable, the held-out data differ: "
        "experiment.seed: 0 (baseline, verifiable), 1 (seed1).**"
    )
    assert warning in text
    shown = shown_runs(baseline=runs["baseline"], verifiable=runs["verifiable"], seed1=other_seed)
    (spec,) = [s for s in (q(shown) for q in QUESTIONS) if s and s.file == "cross_entropy.png"]
    assert warning.strip("*.").removeprefix("Warning: ") in spec.caption


def test_pass_at_k_of_evaluations_that_differ_is_said_not_comparable(runs, other_seed, tmp_path):
    """Other n_samples, other unseen problems: the headline and the pass@k figure say so."""
    text = report_md(runs["baseline"], runs["verifiable"], other_seed, "--out", tmp_path / "r")
    assert (
        "**Warning: humaneval: evaluated differently, pass@k NOT comparable: n_samples: "
        "2 (baseline step 2, verifiable step 2), 4 (seed1 step 2); unseen problems differ: "
        "set 1 of 3 (baseline step 2, verifiable step 2), set 2 of 4 (seed1 step 2).**"
    ) in text
    # --step 1: only baseline was evaluated there, nothing to compare in the headline
    text = report_md(runs["baseline"], other_seed, "--out", tmp_path / "s", "--step", "1")
    assert "pass@k NOT comparable" not in text
    shown = shown_runs(baseline=runs["baseline"], seed1=other_seed)
    (spec,) = [s for s in (q(shown) for q in QUESTIONS) if s and s.file == "pass_at_k.png"]
    assert "n_samples: 2 (baseline step 1, baseline step 2), 4 (seed1 step 2)" in spec.caption


def test_a_pass_at_k_without_a_standard_error_gets_no_error_bar(tmp_path):
    # one problem leaves the standard error undefined (None): that point must not wear a
    # zero-width bar, which would read as an exact score; the other point keeps its ±0.05
    line = Line("run", "C0", [(1, 0.5), (2, 0.6)], errors=(None, 0.05))
    panel = Panel("pass@1", "pass@1 (% of problems)", (line,), axis="percent")
    (ax,) = draw(FigureSpec("x.png", "t", (panel,)), tmp_path / "x.png").axes
    (bars,) = [c for c in ax.collections if len(c.get_segments()) == 2]
    alone, barred = bars.get_segments()
    assert all(math.isnan(y) for _, y in alone)
    assert [y for _, y in barred] == pytest.approx([55.0, 65.0])


def test_runs_that_train_other_tokens_a_step_are_said_not_to_compare_by_step(runs, tmp_path):
    wide = train(runs["baseline"].parents[2], "wide", "baseline", policy(), steps=2,
                 micro_batch_size=4)  # fmt: skip
    text = report_md(runs["baseline"], wide, "--out", tmp_path / "r")
    per_step = {
        name: sorted(v for _, v in read_run(path).scalars["tokens"])
        for name, path in (("baseline", runs["baseline"]), ("wide", wide))
    }
    assert per_step["wide"][0] > 1.5 * per_step["baseline"][-1]  # twice the rows a step
    medians = ", ".join(f"{n} {v[len(v) // 2]:,.0f}" for n, v in per_step.items())
    assert (
        "**Warning: the runs train different numbers of tokens a step (median input tokens: "
        f"{medians}): curves by step compare different amounts of data"
    ) in text


def humaneval_file(path: Path, numbers: range) -> Path:
    """A humaneval-format file of problems no tiny run trained on: ``Local/N`` returns N."""
    rows = [
        {
            "task_id": f"Local/{n}",
            "prompt": f"def f{n}():\n",
            "test": f"def check(candidate):\n    assert candidate() == {n}\n",
            "entry_point": f"f{n}",
        }
        for n in numbers
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_evaluations_of_one_benchmark_name_from_other_files_are_told_apart(runs, tmp_path):
    """A run evaluated on ``humaneval=a.jsonl`` at step 1 and ``humaneval=b.jsonl`` at step 2,
    beside a run evaluated on the built-in HumanEval: each source is its own headline column,
    pass@k panel and row of the run's table, named by its file, and report.md says so; never one
    ``humaneval`` line from one file's problems to another's."""
    run = tmp_path / "runs" / "baseline" / "two_files"
    shutil.copytree(runs["baseline"], run)
    files = {1: humaneval_file(tmp_path / "a.jsonl", range(3)),
             2: humaneval_file(tmp_path / "b.jsonl", range(3, 5))}  # fmt: skip
    for step, file in files.items():
        entry = f'evaluation.benchmarks=["humaneval={file}"]'
        result = invoke("eval", run / "checkpoints" / f"step-{step}", "--no-progress",
                        "--set", entry)  # fmt: skip
        assert result.exit_code == 0, result.output
    text = report_md(runs["baseline"], run, "--out", tmp_path / "r")

    keys = {source: f"humaneval ({source})" for source in ("built-in", *map(str, files.values()))}
    assert (
        f"**Note: humaneval was evaluated on 3 sources of problems ({', '.join(sorted(keys))}), "
        "whose pass@k do not compare: each is its own column, pass@k panel and row, named "
        "humaneval (SOURCE), never one curve.**"
    ) in text
    rows = headline_rows(text)
    assert {f"{key} pass@1 (%)" for key in keys.values()} <= set(next(iter(rows.values())))
    own = summary_of(run / "eval" / "step-2")["results"]["unseen"]
    expected = percent(own["pass_at_k"]["1"], own["pass_at_k_stderr"]["1"])
    assert rows["baseline/two_files"][f"humaneval ({files[2]}) pass@1 (%)"] == expected
    assert rows["baseline/two_files"]["humaneval (built-in) pass@1 (%)"] == "not evaluated"
    for step, file, problems in ((1, files[1], 3), (2, files[2], 2)):  # each with its file
        assert f"| {step} | humaneval | {file} | all {problems} unseen |" in text
    assert "| 2 | humaneval | built-in | 3 of " in text  # the other run's

    shown = [Shown(r, r.label, f"C{i}") for i, r in enumerate(read_runs([runs["baseline"], run]))]
    (spec,) = [s for s in (q(shown) for q in QUESTIONS) if s and s.file == "pass_at_k.png"]
    curves = {
        p.title.removesuffix(": pass@1 on unseen problems"): {
            line.run: line.points for line in p.lines
        }
        for p in spec.panels
        if p.title.endswith("pass@1 on unseen problems")
    }
    assert set(curves) == set(keys.values())
    for step, file in files.items():
        own = summary_of(run / "eval" / f"step-{step}")["results"]["unseen"]["pass_at_k"]["1"]
        assert curves[keys[str(file)]] == {"baseline/two_files": [(step, own)]}
    assert [step for step, _ in curves[keys["built-in"]][shown[0].label]] == [1, 2]
