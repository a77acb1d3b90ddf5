"""The benchmarks' timer: warm-up calls (compilation, autotuning, graph capture) are left out of
the figures and reported beside them."""

import time

from wmtp.bench.timing import time_call


def test_the_warm_up_is_left_out_of_the_figures_and_reported_apart():
    calls = []

    def first_call_compiles():
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.001)

    timing = time_call(first_call_compiles, warmup=1, repeats=3)
    assert len(calls) == 4
    assert timing.max_ms < 300  # the slow first call is none of the timed ones
    assert timing.warmup_s >= 0.3
    assert timing.to_dict()["warmup_s"] == timing.warmup_s  # in every row's "step"


def test_short_calls_are_timed_over_at_least_min_seconds():
    """``min_seconds``: one more warm-up call, timed, sets how many repeats fill the time (never
    fewer than asked for, never more than ``MAX_REPEATS``); ``Timing.repeats`` is the number
    run. Training steps get it on a GPU only: CPU runs are tests."""
    import torch

    from wmtp.bench.timing import MAX_REPEATS, STEP_MIN_SECONDS, step_min_seconds

    calls = []

    def ten_ms():
        calls.append(1)
        time.sleep(0.01)

    timing = time_call(ten_ms, warmup=1, repeats=2, min_seconds=0.2)
    assert 10 <= timing.repeats <= 20  # 0.2 s of calls of at least 10 ms
    assert len(calls) == 1 + 1 + timing.repeats
    assert timing.warmup_s >= 0.02  # the timed extra call is warm-up
    assert time_call(ten_ms, warmup=0, repeats=30, min_seconds=0.05).repeats == 30
    assert time_call(lambda: None, warmup=0, repeats=1, min_seconds=1.0).repeats == MAX_REPEATS
    assert step_min_seconds(torch.device("cpu")) == 0.0
    assert step_min_seconds(torch.device("cuda")) == STEP_MIN_SECONDS


def test_every_timed_call_is_kept_in_order_beside_the_figures():
    """``Timing.samples_ms``: each timed call's milliseconds, in order; the median and range are
    theirs, and a row's ``step`` carries them (a few slow calls, or all of them slow)."""
    import statistics

    from wmtp.bench.timing import Timing

    pauses = iter([0.002, 0.02, 0.002, 0.002, 0.002])

    def one_slow_call():
        time.sleep(next(pauses))

    timing = time_call(one_slow_call, warmup=0, repeats=5)
    assert len(timing.samples_ms) == timing.repeats == 5
    assert max(timing.samples_ms) == timing.samples_ms[1] == timing.max_ms >= 20
    assert timing.median_ms == statistics.median(timing.samples_ms) < 20
    assert timing.min_ms == min(timing.samples_ms)
    row = timing.to_dict()
    assert row["samples_ms"] == [round(ms, 3) for ms in timing.samples_ms]
    assert Timing(**row).to_dict() == row  # a row read back (PeerResult.of_row) keeps them
