"""``execute`` against ordinary and hostile programs, under bubblewrap and under rlimits only.

Every program here really runs; nothing is mocked. Items rlimits only is documented not to block
(setsid survivors as one user, network, writes where the user may write) are tested under
bubblewrap only. Each test asks for its isolation explicitly (an opt-in to rlimits).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.sandbox.isolations import KINDS, bwrap_only
from wmtp.sandbox import execute
from wmtp.sandbox.users import runner

TIMEOUT_S = 1.0
SLACK_S = 5.0  # "within a second or two of the limit", with room for a loaded CI machine


def run(kind: str, program: str, **kw):
    kw.setdefault("timeout_s", TIMEOUT_S)
    kw.setdefault("memory_mb", 256)
    return execute(textwrap.dedent(program), isolation_kind=kind, **kw)


def live_processes_with(token: str) -> list[int]:
    """PIDs of live (not zombie) processes whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def survivors_after(token: str, limit_s: float = 5.0) -> list[int]:
    """Processes with ``token`` still alive; SIGKILL takes effect asynchronously, so allow it."""
    deadline = time.monotonic() + limit_s
    while (pids := live_processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


# --------------------------------------------------------------------------- ordinary programs


@pytest.mark.parametrize("kind", KINDS)
def test_exit_status_and_output(kind):
    ok = run(kind, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    assert (ok.status, ok.stdout, ok.stderr, ok.isolation) == ("passed", "out\n", "err\n", kind)
    bad = run(kind, "raise ValueError('boom')")
    assert bad.status == "failed" and "ValueError: boom" in bad.stderr
    assert run(kind, "import sys; sys.exit(3)").returncode == 3


@pytest.mark.skipif(os.geteuid() != 0 or not runner().drops_root, reason="drops root only as root")
@pytest.mark.parametrize("kind", KINDS)
def test_as_root_the_program_runs_as_an_unprivileged_uid_without_groups(kind):
    """As root, each call's program runs as its own uid, with its group and no other (the
    launcher drops root before it reads anything; the caller starts it without forking)."""
    ids = run(kind, "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())")
    assert ids.status == "passed", ids.stderr
    uid, euid, gid, groups = ids.stdout.split(maxsplit=3)
    assert uid == euid == gid != "0" and groups.strip() in ("[]", f"[{gid}]"), ids.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_stdin_and_files_reach_the_program(kind):
    result = run(
        kind,
        "import sys; print(sys.stdin.read().upper() + open('data.txt').read())",
        stdin="abc",
        files={"data.txt": "xyz"},
    )
    assert result.stdout == "ABCxyz\n"


# --------------------------------------------------------------------------- hostile programs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "program", ["while True:\n    pass\n", "import time\ntime.sleep(600)\n"], ids=["busy", "sleep"]
)
def test_busy_loop_and_sleep_end_as_timeout(kind, program):
    result = run(kind, program)
    assert result.status == "timeout"
    assert result.duration_s < TIMEOUT_S + SLACK_S, result.duration_s


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "program",
    ["x = bytearray(10**11)\n", "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)\n"],
    ids=["one-shot", "gradual"],
)
def test_memory_bomb_ends_as_memory(kind, program):
    result = run(kind, program, memory_mb=200, timeout_s=20)
    assert result.status in ("memory", "failed"), result
    assert result.status == "memory", result.stderr[-300:]


@pytest.mark.parametrize("kind", KINDS)
def test_output_flood_is_capped(kind):
    cap = 4096
    result = run(kind, "while True:\n    print('x' * 100000)\n", max_output_bytes=cap)
    assert result.status in ("failed", "timeout")
    assert len(result.stdout) <= cap + 100, len(result.stdout)
    assert "bytes cut" in result.stdout


def _fork_program(token: str, new_session: bool) -> str:
    # The child forks a grandchild and exits (a double fork); the grandchild lingers, its command
    # line carrying the token so the test can find it from outside any PID namespace.
    setsid = "os.setsid()" if new_session else "pass"
    return f"""
        import os, subprocess, sys
        if os.fork() == 0:
            {setsid}
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "{token}"])
            os._exit(0)
        os.wait()
        print("parent done")
    """


@pytest.mark.parametrize("kind", KINDS)
def test_double_forked_children_do_not_outlive_the_call(kind):
    token = f"wmtp-survivor-{secrets.token_hex(8)}"
    result = run(kind, _fork_program(token, new_session=False), timeout_s=10)
    assert result.stdout == "parent done\n"
    assert survivors_after(token) == []


@pytest.mark.parametrize("kind", KINDS)
def test_setsid_children_do_not_outlive_the_call(kind):
    if kind == "rlimits" and not runner().drops_root:
        pytest.skip("rlimits only, as one user, cannot catch setsid children (its warning says so)")
    token = f"wmtp-survivor-{secrets.token_hex(8)}"
    result = run(kind, _fork_program(token, new_session=True), timeout_s=10)
    assert result.stdout == "parent done\n"
    assert survivors_after(token) == []


@pytest.mark.parametrize("kind", KINDS)
def test_children_of_a_timed_out_program_are_killed(kind):
    token = f"wmtp-survivor-{secrets.token_hex(8)}"
    program = _fork_program(token, new_session=False) + "\n        import time; time.sleep(600)\n"
    result = run(kind, program)
    assert result.status == "timeout"
    assert survivors_after(token) == []


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_outside_the_folder_is_written_or_deleted(tmp_path, kind):
    if kind == "rlimits" and not runner().drops_root:
        pytest.skip("rlimits only runs as the caller's own user, who may write the caller's files")
    home_dir = Path.home() / f".wmtp-sandbox-test-{secrets.token_hex(4)}"
    home_dir.mkdir()
    try:
        victims = [tmp_path / "victim.txt", home_dir / "victim.txt"]
        for victim in victims:
            victim.write_text("keep me")
        program = f"""
            import os, shutil
            for target in {[str(v) for v in victims]!r}:
                for attempt in (lambda: os.remove(target),
                                lambda: open(target, "w").write("gone"),
                                lambda: open(target + ".new", "w").write("new"),
                                lambda: shutil.rmtree(os.path.dirname(target))):
                    try:
                        attempt()
                        print("managed", target)
                    except OSError:
                        pass
            open("inside.txt", "w").write("fine")
            print(open("inside.txt").read())
        """
        result = run(kind, program)
        assert result.stdout == "fine\n", result
        for victim in victims:
            assert victim.read_text() == "keep me"
            assert not victim.with_name("victim.txt.new").exists()
    finally:
        for path in home_dir.iterdir():
            path.unlink()
        home_dir.rmdir()


@bwrap_only
def test_no_network_connection_not_even_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        program = f"""
            import socket
            for host in ("127.0.0.1", "localhost", "1.1.1.1"):
                try:
                    socket.create_connection((host, {port}), timeout=2).close()
                    print("connected", host)
                except OSError as exc:
                    print("refused", host, type(exc).__name__)
        """
        result = run("bwrap", program, timeout_s=10)
        assert "connected" not in result.stdout and result.stdout.count("refused") == 3, result
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever reached the listener
            listener.accept()


@pytest.mark.parametrize("kind", KINDS)
def test_killing_the_parent_or_a_neighbour_does_not_reach_the_caller(kind):
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        program = f"""
            import os, signal
            for pid in (os.getppid(), {neighbour.pid}, {os.getpid()}):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        """
        if kind == "rlimits" and not runner().drops_root:
            pytest.skip("rlimits only runs as the caller's own user, who may signal the caller")
        result = run(kind, program)
        assert result.status in ("passed", "failed")
        assert neighbour.poll() is None, "the sandbox killed a process outside it"
    finally:
        neighbour.send_signal(signal.SIGKILL)
        neighbour.wait()


@pytest.mark.parametrize("kind", KINDS)
def test_fork_bomb_is_contained(kind):
    if not runner().drops_root and os.geteuid() == 0:
        pytest.skip("root ignores RLIMIT_NPROC; no interpreter nobody can run here")
    program = """
        import os, sys, time
        first = os.getpid()
        try:
            while True:
                os.fork()
        except OSError:
            if os.getpid() == first:
                print("limited")
            time.sleep(0.2)
    """
    result = run(kind, program, max_processes=32, timeout_s=5)
    assert "limited" in result.stdout  # fork failed: the process limit held


@pytest.mark.parametrize("kind", KINDS)
def test_a_fork_bomb_does_not_starve_a_sandbox_beside_it(kind):
    if not runner().drops_root:
        pytest.skip("per-call uids need root; as one user, all sandboxes share the process limit")
    import threading

    bomb = """
        import os, time
        try:
            while True:
                os.fork()
        except OSError:
            print("limited", flush=True)
            time.sleep(3)
    """
    bomb_result = []
    thread = threading.Thread(target=lambda: bomb_result.append(run(kind, bomb, timeout_s=8)))
    thread.start()
    try:
        time.sleep(1.0)  # let the bomb reach its limit (not an assertion on time)
        beside = run(kind, "import subprocess, sys; subprocess.run([sys.executable, '-c', ''])")
        assert beside.status == "passed", beside
    finally:
        thread.join()
    assert "limited" in bomb_result[0].stdout
