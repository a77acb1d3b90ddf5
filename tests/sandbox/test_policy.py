"""Which isolation runs code: bubblewrap, rlimits only when the user opts in, else nothing at all.

"Without bubblewrap" is real: a PATH on which ``bwrap`` is not found. Warnings are read from real
subprocesses (each warns once per process).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.sandbox.isolations import HAS_BWRAP, bwrap_only, child_env, path_without_bwrap
from wmtp.errors import SandboxError
from wmtp.sandbox import (
    ENV_VAR,
    MODES,
    CheckJob,
    check,
    check_many,
    choose,
    execute,
    isolation,
    isolation_line,
    require,
)
from wmtp.sandbox.users import runner

WARNING = "sandbox: untrusted code runs without bubblewrap"


@pytest.fixture
def unset(monkeypatch):
    """``WMTP_SANDBOX`` unset (empty), and restored after whatever the test sets."""
    monkeypatch.setenv(ENV_VAR, "")


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path, unset):
    """This process without bubblewrap."""
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))


@pytest.fixture
def open_folder():
    """A folder any uid may write (the per-call uid too), to see whether a program ran."""
    folder = Path(tempfile.mkdtemp(prefix="wmtp-policy-test-"))
    folder.chmod(0o777)
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def _writer(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')\n"


# --------------------------------------------------------------------------- fail closed


def test_without_bubblewrap_no_entry_point_runs_anything(no_bwrap, open_folder):
    marker = open_folder / "ran"
    program = _writer(marker)
    calls = {
        "execute": lambda: execute(program),
        "check": lambda: check(program, "def check(c):\n    pass\n", "f"),
        "check_many": lambda: check_many(
            [CheckJob(program, "def check(c):\n    pass\n", "f")], progress=False
        ),
    }
    for name, call in calls.items():
        with pytest.raises(SandboxError) as caught:
            call()
        assert "bwrap is not installed: not found on PATH" in str(caught.value), name
    assert not marker.exists()  # nothing ran
    assert isolation().kind == "none"
    # the same program, once the user accepts rlimits only, runs (and may write there)
    choose("rlimits")
    assert execute(program).status == "passed" and marker.read_text() == "ran"


def test_the_refusal_says_why_how_to_install_and_how_to_opt_in(no_bwrap):
    with pytest.raises(SandboxError) as caught:
        require(purpose="labelling things")
    message = caught.value.render()
    assert message.startswith("sandbox: labelling things needs bubblewrap, which cannot run here")
    assert "bwrap is not installed: not found on PATH" in message  # the probe's reason
    assert "apt-get install bubblewrap" in message and "your distribution's" in message
    assert f"{ENV_VAR}=rlimits" in message and "--sandbox rlimits" in message
    assert "does not block network access" in message  # what opting in gives up


def test_forcing_bubblewrap_where_it_cannot_run_is_refused(no_bwrap, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bwrap")
    with pytest.raises(SandboxError, match=f"needs bubblewrap \\({ENV_VAR}=bwrap\\)"):
        execute("print(1)")
    assert isolation_line().startswith(f"none: {ENV_VAR}=bwrap but bubblewrap unusable")


@bwrap_only
def test_forcing_bubblewrap_where_it_works(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bwrap")
    result = execute("print('inside')")
    assert (result.status, result.stdout, result.isolation) == ("passed", "inside\n", "bwrap")


def test_unset_means_bubblewrap_where_it_works_and_nothing_else(unset):
    if HAS_BWRAP:
        assert execute("print(1)").isolation == "bwrap"
    else:
        with pytest.raises(SandboxError):
            execute("print(1)")


def test_unknown_values_are_refused(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "chroot")
    with pytest.raises(SandboxError, match=f"{ENV_VAR}='chroot': expected 'bwrap' or 'rlimits'"):
        execute("print(1)")
    with pytest.raises(SandboxError, match="--sandbox chroot: expected"):
        choose("chroot")
    assert isolation_line().startswith(f"none: {ENV_VAR}='chroot'")


# --------------------------------------------------------------------------- opting in


def _run_twice_in_a_child(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A fresh process without bubblewrap runs two programs; its isolation and stderr."""
    code = textwrap.dedent("""
        import sys
        from wmtp.sandbox import choose, execute
        choose(sys.argv[1] if len(sys.argv) > 1 else None)
        print(execute("print(1)").isolation, execute("print(2)").isolation)
    """)
    args = env.pop("args", "")
    return subprocess.run(
        [sys.executable, "-c", code, *args.split()],
        env=child_env(path_without_bwrap(tmp_path), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_opting_in_through_the_environment_runs_with_rlimits_and_warns_once(tmp_path):
    done = _run_twice_in_a_child(tmp_path, WMTP_SANDBOX="rlimits")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rlimits rlimits\n"
    assert done.stderr.count(WARNING) == 1, done.stderr
    assert f"as chosen with {ENV_VAR}=rlimits" in done.stderr
    assert "does not block network access" in done.stderr


def test_opting_in_through_choose_reaches_children(tmp_path):
    done = _run_twice_in_a_child(tmp_path, args="rlimits")
    assert done.returncode == 0 and done.stdout == "rlimits rlimits\n", done.stderr
    assert done.stderr.count(WARNING) == 1
    assert "as chosen with --sandbox rlimits" in done.stderr  # what the user typed
    refused = _run_twice_in_a_child(tmp_path / "again")
    assert refused.returncode == 1 and "SandboxError" in refused.stderr and not refused.stdout


def test_choose_sets_the_choice_for_this_process_and_its_children(unset):
    choose(None)
    assert os.environ[ENV_VAR] == ""
    choose("rlimits")
    assert os.environ[ENV_VAR] == "rlimits" and isolation().kind == "rlimits"
    child = "from wmtp.sandbox import isolation; print(isolation().kind)"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert done.stdout == "rlimits\n"


def test_the_warning_tells_what_rlimits_leave_open(unset):
    choose("rlimits")
    detail = isolation().detail
    assert "(opted in)" in detail and "does not block network access" in detail
    if runner().drops_root:
        assert "writes where any user may write" in detail
    else:
        assert "setsid" in detail and "not only in /tmp" in detail


def test_rlimits_really_leave_the_network_open(unset):
    """What the warning says, seen: under rlimits a program reaches a listener on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
        assert execute(program, isolation_kind="rlimits").status == "passed"


# --------------------------------------------------------------------------- reporting


def test_isolation_line_in_each_state(monkeypatch, tmp_path, unset):
    if HAS_BWRAP:
        assert isolation_line().startswith("bwrap: bubblewrap")
    monkeypatch.setenv(ENV_VAR, "rlimits")
    assert isolation_line().startswith("rlimits: rlimits (CPU, memory, file size, processes)")
    monkeypatch.setenv(ENV_VAR, "")
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    assert isolation_line() == (
        "none: bubblewrap unusable (bwrap is not installed: not found on PATH); "
        f"set {ENV_VAR}=rlimits to run with rlimits only"
    )


def test_the_cli_offers_exactly_the_modes():
    from wmtp.commands._common import SandboxMode

    assert tuple(mode.value for mode in SandboxMode) == MODES


def test_importing_the_sandbox_imports_no_torch():
    probe = "import sys, wmtp.sandbox; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout == "False\n", done.stderr
