"""The GPU command scripts (``bench/*.sh``) parse, and every stage they document or run by
default is a function they define, and the other way round: a renamed stage cannot leave its
description, or a default list, pointing at nothing. (They run on the GPU machine; CI cannot run
them, so this is what keeps them whole between leases.)"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.train.train_helpers import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.sh"))
STAGE_LINE = re.compile(r"^#   ([a-z][a-z0-9_]*)(?: [A-Z]+)?\s+\S")
"""A stage in a script's header: ``#   name  what it does`` (``#   small VOCAB  ...``)."""


def stages(text: str) -> tuple[list[str], set[str], list[str]]:
    """``(documented, defined, run by default)`` stage names of a script."""
    header = []
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    documented = [
        m.group(1)
        for line in header
        if (m := STAGE_LINE.match(line)) and m.group(1) != "bash"  # not the usage line
    ]
    defined = set(re.findall(r"^stage_([a-z0-9_]+)\(\)", text, re.MULTILINE))
    default = re.search(r"^\[ \$# -eq 0 \] && set -- (.+)$", text, re.MULTILINE)
    return documented, defined, default.group(1).split() if default else []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_bench_script_parses_and_its_stages_match_their_descriptions(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    documented, defined, default = stages(script.read_text())
    if not defined:
        return  # a helper or a single-purpose script: no stages
    assert sorted(set(documented)) == sorted(defined), script.name
    assert set(default) <= defined, script.name
