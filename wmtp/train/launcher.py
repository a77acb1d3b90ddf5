"""``wmtp run --nproc-per-node N``: start torchrun, stay in charge of it, say what happened.

- **No orphans.** torchrun starts in a session of its own with a parent-death signal, so it (and
  the workers it stops) ends when the launcher ends, even by SIGKILL. SIGINT and SIGTERM are
  forwarded to it (its workers then finish their step and write a checkpoint: a clean stop, exit
  128 + the signal); a second one goes to the workers themselves, which stop at once naming the
  checkpoint that holds the run (said once, not by every rank), and whatever still runs
  ``KILL_AFTER_S`` later (or at a third signal) is killed, torchrun with it. The launcher waits
  for it.
  torchrun kills workers that have not ended ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds after it
  passed a signal on (30 by default, less than a large model's step and checkpoint): the launcher
  gives it the collective timeout instead (``WMTP_DIST_TIMEOUT_S``, 600 s) unless that variable
  is set, and says so when a stop of training ranks did not end with every rank's checkpoint
  (``wmtp.train.run_log.mark_rank``). A signal that reached one worker, or torchrun alone,
  stops every rank at the same step too: that clean stop is the run's exit 128 + the signal,
  not a failed rank.
- **One message per failure.** Each failed worker leaves a record (``wmtp.train.run_log``); the
  launcher prints the first rank that failed by itself with its error, the others in one line,
  and exits 1 (naming the run's newest checkpoint and the command that continues from it), or
  the error's own code (2) where every rank that failed by itself stopped on a user's error (bad
  data rank 0 read; the others lost it). An error every rank stopped on
  together (a decision they took collectively: a NaN step, a checkpoint that could not be
  written) is the run's, not a rank's: printed once as one process would, with its exit code
  (2). torchrun's own report of the failure (a traceback
  and a box naming the "Root Cause") is kept out of the way, read only for a worker that left
  no record (killed by a signal). The workers' own output passes through as it comes, but for
  rank 0's notice that it stops after its step with a checkpoint where torchrun stops the ranks
  because one failed (no checkpoint follows: the failure is said instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from wmtp.train.run_log import FAILURES_ENV, RUN_DIR_FILE, STOPPED_SUFFIX, TRAINING_SUFFIX

PR_SET_PDEATHSIG = 1
SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
"""torchrun's grace, in seconds, between passing a signal to its workers and killing them."""
STOP_GRACE_ENV, STOP_GRACE_S = "WMTP_DIST_TIMEOUT_S", "600"
"""What the launcher gives torchrun as that grace (``wmtp.parallel.dist``'s collective timeout)."""


def collective_timeout_s() -> float:
    """``$WMTP_DIST_TIMEOUT_S``: seconds a collective waits for the other ranks (600 unset),
    and the grace torchrun gives a stopping worker; a ``RunError`` naming the variable for a
    value that is not a positive number (before torchrun starts, which would fail on it)."""
    from wmtp.errors import RunError

    text = os.environ.get(STOP_GRACE_ENV, STOP_GRACE_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise RunError(
            f"{STOP_GRACE_ENV} = {text!r}: give the collective timeout in seconds, a positive number"
        )
    return seconds


TORCHRUN_NOISE = re.compile(r"^\[?[WEI]\d{4} [\d:.]+ \d+ .*torch/distributed/")
"""torchrun's own log lines (``W1202 09:00:00.123 4567 torch/distributed/elastic/...``)."""
TORCHRUN_STOPS_WORKERS = re.compile(r"Sending process \d+ closing signal")
"""torchrun's log line as it stops a worker: because another failed, or on a signal it got."""
TORCHRUN_GOT_SIGNAL = "death signal, shutting down workers"
"""torchrun's log line for a signal it got (``Received Signals.SIGTERM death signal, ...``)."""
STOP_NOTICE = "stopping after this step with a checkpoint"
"""Rank 0's notice that a signal stops the run at its next step (``wmtp.train.guards``)."""
STOP_NOW = " again: stopping now, "
"""A worker's word that a second signal ends it at once (every rank says the same line)."""
KILL_AFTER_S = 10.0
"""How long a second signal gives the workers to stop at once before they are killed."""


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Launch:
    """One torchrun job: started by :meth:`run`, which returns the launcher's exit code."""

    def __init__(self, command: list[str], world_size: int) -> None:
        self.command, self.world_size = command, world_size
        self.forwarded, self.killed = 0, False
        self.report: list[str] = []
        self.workers: list[int] = []
        self.deadline = threading.Timer(KILL_AFTER_S, self._kill_everything)
        """Started by a second signal: what still runs then is killed."""
        self.said: set[str] = set()
        self.torchrun_signalled = False  # torchrun got a signal (not from the launcher)
        self.stopping_survivors = False  # torchrun stops the ranks because one failed
        # torchrun's grace: whole seconds, the collective timeout unless the user set it
        timeout = collective_timeout_s()  # checked even where torchrun's grace is set
        self.grace = os.environ.get(SHUTDOWN_ENV) or str(math.ceil(timeout))

    def run(self) -> int:
        self.failures = Path(tempfile.mkdtemp(prefix="wmtp-failures-"))
        env = dict(os.environ, **{FAILURES_ENV: str(self.failures), SHUTDOWN_ENV: self.grace})
        self.process = subprocess.Popen(
            self.command,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only
            preexec_fn=die_with_parent,
        )
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        relay = threading.Thread(target=self._relay, daemon=True)
        relay.start()
        try:
            code = self.process.wait()
            if self.killed:
                self.deadline.cancel()  # its groups' ids may be another's later
                self._kill_everything()  # a worker torchrun left behind
            relay.join(timeout=10)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._outcome(code)

    def _forward(self, signum: int, frame: object) -> None:
        if self.killed:  # a third signal: no more waiting
            self._kill_everything()
        elif self.forwarded:  # a second signal: everything stops now
            self._stop_now(signum)
        else:
            self.forwarded = signum
            self.process.send_signal(signum)

    def _stop_now(self, signum: int) -> None:
        """A second signal, passed to the workers (torchrun's children, each in a session of its
        own): each stops at once, saying which checkpoint holds the run. What still runs
        ``KILL_AFTER_S`` later (a rank deep in a collective), or at a third signal, is killed,
        torchrun with it; torchrun's death would otherwise reach them as a SIGTERM, said as such by every rank."""
        self.killed = True
        self.workers = children(self.process.pid)
        for pid in self.workers:
            _signal(pid, signum)
        if not self.workers:  # none started yet: nothing to say
            self._kill_everything()
            return
        self.deadline.daemon = True
        self.deadline.start()

    def _kill_everything(self) -> None:
        """SIGKILL to torchrun's session and to each worker's (their own children included)."""
        for group in (self.process.pid, *self.workers):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
                os.killpg(group, signal.SIGKILL)

    def _relay(self) -> None:
        """Workers' stderr as it comes; torchrun's log lines and final report held back."""
        assert self.process.stderr is not None
        in_report = False
        for line in self.process.stderr:
            in_report = in_report or line.startswith("Traceback (most recent call last)")
            if in_report or TORCHRUN_NOISE.match(line):
                self._note_torchrun(line)
                self.report.append(line)
                continue
            if self._held_back(line):
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
        if not any("torch.distributed" in line for line in self.report):  # not torchrun's
            sys.stderr.writelines(line for line in self.report if not TORCHRUN_NOISE.match(line))

    def _note_torchrun(self, line: str) -> None:
        """Whether torchrun stops the ranks by itself, no signal asked: then one failed."""
        if TORCHRUN_GOT_SIGNAL in line:
            self.torchrun_signalled = True
        elif TORCHRUN_STOPS_WORKERS.search(line):
            asked = self.forwarded or self.torchrun_signalled
            self.stopping_survivors = self.stopping_survivors or not asked

    def _held_back(self, line: str) -> bool:
        """A worker's line that would mislead: rank 0's notice of a stop with a checkpoint when
        torchrun's SIGTERM to the survivors of a failed rank caused it (the failure is said at
        the end, and no checkpoint follows), and a second signal's stop said again by another
        rank."""
        if STOP_NOTICE in line:
            return self.stopping_survivors
        if STOP_NOW in line:
            if line in self.said:
                return True
            self.said.add(line)
        return False

    def _outcome(self, code: int) -> int:
        if self.forwarded:
            if self._stop_cut_short():
                stop = unfinished_stop(self.forwarded, self.grace, self.world_size)
                print(stop, file=sys.stderr, flush=True)
            return 128 + self.forwarded
        if code == 0:
            return 0
        stopped = self._stopped_together()
        if stopped is not None:  # a signal that reached one rank, or torchrun: every rank
            return stopped  # agreed and checkpointed, and rank 0 said so
        records = self._records()
        shared = shared_failure(records, self.world_size)
        if shared is not None:
            print(f"error: {shared['message']}", file=sys.stderr, flush=True)
            return int(shared["exit_code"])
        print(f"error: {summary(records, self.report)}", file=sys.stderr, flush=True)
        code = exit_code(records)
        kept = self._kept() if code == 1 else None  # a user's error says what to change
        if kept is not None:
            print(kept, file=sys.stderr, flush=True)
        return code

    def _kept(self) -> str | None:
        """After a crash or a killed rank: the run's newest checkpoint and the command that
        continues from it (None without one: rank 0 said where its log is)."""
        from wmtp.models.locate import step_dirs, step_number
        from wmtp.train.run_dir import resume_command

        try:
            run = Path((self.failures / RUN_DIR_FILE).read_text())
        except OSError:  # rank 0 had no run directory yet
            return None
        saved = step_dirs(run)
        if not saved:
            return None
        return (
            f"checkpoint {saved[-1]} holds the steps up to step {step_number(saved[-1])}; "
            f"continue with: {resume_command(run, self.world_size)}"
        )

    def _stop_cut_short(self) -> bool:
        """Whether training ranks were stopping on the forwarded signal and not every one of
        them ended with its checkpoint (a second signal, asking for that, aside)."""

        def count(suffix: str) -> int:
            return len(list(self.failures.glob(f"rank*{suffix}")))

        training = count(TRAINING_SUFFIX)
        return bool(training) and count(STOPPED_SUFFIX) < self.world_size and not self.killed

    def _stopped_together(self) -> int | None:
        """The exit code every rank stopped with after a clean, checkpointed stop (a signal to
        one worker or to torchrun, which the ranks agree on at a step), else None."""
        marks = list(self.failures.glob(f"rank*{STOPPED_SUFFIX}"))
        codes = {m.read_text().strip() for m in marks}
        if len(marks) != self.world_size or len(codes) != 1:
            return None
        code = codes.pop()
        return int(code) if code.isdigit() else None

    def _records(self) -> list[dict]:
        records = []
        for path in sorted(self.failures.glob("rank*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return records


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's ``/proc``; none found elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # after "pid (name) state": the parent
            found.append(int(entry.name))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.kill(pid, signum)


def unfinished_stop(signum: int, grace: str, processes: int) -> str:
    """What a forwarded signal did when not every rank stopped cleanly with its checkpoint."""
    from wmtp.train.run_dir import resume_command

    name = signal.Signals(signum).name
    return (
        f"stopped: {name}, but not every rank stopped cleanly with a checkpoint: a rank still "
        f"starting ends at once, and torchrun kills one still busy after {SHUTDOWN_ENV} = "
        f"{grace} s (set it higher to give a stop more time). The steps after the run's newest "
        f"checkpoint are lost; continue from it with: {resume_command('RUN_DIR', processes)}"
    )


def shared_failure(records: list[dict], world_size: int) -> dict | None:
    """The record of a user-facing error (no traceback) that every one of ``world_size`` ranks
    stopped on by itself with the same message (none of them lost a peer), else ``None``."""
    if len(records) != world_size or world_size < 2:
        return None
    if any(r["secondary"] or r.get("traceback") for r in records):
        return None
    return records[0] if len({r["message"] for r in records}) == 1 else None


def exit_code(records: list[dict]) -> int:
    """The launcher's code for ranks that failed apart: the user's error (2) where every rank
    that failed by itself stopped on one (bad data that rank 0 read, the others losing it);
    else 1 (a bug, a rank killed without a record)."""
    own = [r for r in records if not r["secondary"]]
    codes = {int(r["exit_code"]) for r in own if not r.get("traceback")}
    if own and len(codes) == 1 and not any(r.get("traceback") for r in own):
        return codes.pop()
    return 1


def summary(records: list[dict], report: list[str]) -> str:
    """The failed rank and its error, then the others in one line (see the module docstring).
    A rank that failed without a record (killed by a signal) is named from torchrun's report."""
    records = sorted(records, key=lambda r: (r["secondary"], r["time"]))
    primary = [r for r in records if not r["secondary"]]
    if primary:
        first = primary[0]
        text = f"rank {first['rank']} failed: {first['message']}"
        if first.get("traceback"):
            text += "\n" + first["traceback"].rstrip()
        rest = [r for r in records if r is not first]
    else:  # every record is a peer's loss: the rank that failed left none
        text, rest = _from_torchrun(report, records), records
    if rest:
        others = "; ".join(f"rank {r['rank']}: {_aftermath(r)}" for r in rest)
        text += f"\n(the other ranks stopped with it: {others})"
    return text


def _from_torchrun(report: list[str], records: list[dict] | None = None) -> str:
    """What torchrun's report says of the rank that failed without a record of its own (killed
    by a signal): its rank and how it ended. torchrun's "Root Cause" is the first failure it
    observed, which can be a peer that only lost the connection; the ranks that left a record
    are left out for that reason."""
    text = "".join(report)
    recorded = {r["rank"] for r in records or []}
    entry = r"^\s*rank\s*:\s*(\d+)\b.*?^\s*exitcode\s*:\s*(-?\d+)"  # one "[i]:" block
    entries = re.findall(entry, text, re.S | re.M)
    failures = [(int(rank), int(code)) for rank, code in entries if int(rank) not in recorded]
    if not failures:
        return "a worker failed (see above)"
    rank, code = sorted(failures, key=lambda f: f[1] >= 0)[0]  # a signal's death first
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return f"rank {rank} failed: {how}, without a message of its own"


def _aftermath(record: dict) -> str:
    """A secondary failure in a few words (the gloo/NCCL text of a lost peer is noise)."""
    if record["secondary"]:
        return "lost its connection to the failed rank"
    line = record["message"].strip().splitlines()[0] if record["message"].strip() else ""
    return line if len(line) <= 120 else line[:117] + "..."


__all__ = [
    "Launch",
    "collective_timeout_s",
    "die_with_parent",
    "exit_code",
    "shared_failure",
    "summary",
]
