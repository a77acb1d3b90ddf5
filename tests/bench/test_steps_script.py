"""``bench/steps.sh``'s ``pack_logs``, which ends every GPU bench script: the device machine brings
back at most eight files from ``$OUT``, so past eight the top-level summaries, then archives, then
other files stay while they fit, and one archive takes the rest; eight or fewer stay as they are. Run through bash as the
scripts source it."""

from __future__ import annotations

import os
import subprocess
import tarfile

from tests.train.train_helpers import REPO


def pack(tmp_path, files: dict[str, str]) -> set[str]:
    """Write ``files`` under ``$OUT``, run ``pack_logs``; the files ``$OUT`` then holds."""
    out, work = tmp_path / "out", tmp_path / "work"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    work.mkdir()
    env = dict(os.environ, OUT=str(out), WORK=str(work), LOG_DIR=str(work / "logs"))
    script = "source bench/steps.sh && echo log > $LOG_DIR/stage.log && pack_logs"
    subprocess.run(["bash", "-c", script], cwd=REPO, env=env, check=True, capture_output=True)
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def test_past_eight_files_the_top_level_stays_and_folders_go_into_one_archive(tmp_path):
    files = {"h200.json": "{}", "h200.md": "# s", "h200_step.md": "# t"}
    files |= {f"peers/row{i}.json": str(i) for i in range(6)}
    files |= {"profiles.tar.gz": "p"}
    left = pack(tmp_path, files)
    kept = {"h200.json", "h200.md", "h200_step.md", "profiles.tar.gz"}
    assert left == kept | {"logs.tar.gz", "steps.jsonl", "results.tar.gz"}
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as archive:
        names = set(archive.getnames())
    assert {n for n in files if n.startswith("peers/")} <= names


def test_summaries_then_archives_are_kept_first_when_the_top_level_is_too_many(tmp_path):
    files = {f"note{i}.txt": str(i) for i in range(5)}
    files |= {"a.json": "{}", "b.md": "#", "c.tar.gz": "c", "d.tar.gz": "d"}
    left = pack(tmp_path, files)  # 11 top-level files with logs.tar.gz and steps.jsonl
    assert len(left) == 8 and "results.tar.gz" in left
    assert {"a.json", "b.md", "c.tar.gz", "d.tar.gz", "logs.tar.gz"} <= left
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as archive:
        names = set(archive.getnames())
    assert names | left == set(files) | {"logs.tar.gz", "steps.jsonl", "results.tar.gz"}


def test_eight_files_or_fewer_stay_as_they_are(tmp_path):
    files = {"h200.json": "{}", "full1b.json": "{}", "measured.tar.gz": "m"}
    assert pack(tmp_path, files) == set(files) | {"logs.tar.gz", "steps.jsonl"}
