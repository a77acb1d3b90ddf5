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
