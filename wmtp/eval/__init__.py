"""Evaluation: pass@k, benchmarks, generation and self-speculative decoding (programs run in
``wmtp.sandbox``).

Torch-free to import: every name loads its module on first use.
"""

from __future__ import annotations

from wmtp._lazy import lazy_getattr

_LAZY = {
    # name -> module that defines it
    "pass_at_k": "wmtp.eval.passk",
    "mean_pass_at_k": "wmtp.eval.passk",
    "pass_at_k_stderr": "wmtp.eval.passk",
    "Benchmark": "wmtp.eval.benchmarks",
    "Problem": "wmtp.eval.benchmarks",
    "load_benchmark": "wmtp.eval.benchmarks",
    "Sampling": "wmtp.eval.generate",
    "StopRule": "wmtp.eval.generate",
    "generate": "wmtp.eval.generate",
    "speculative_generate": "wmtp.eval.speculative",
    "speculative_generate_batch": "wmtp.eval.speculative",
    "check_completions": "wmtp.eval.evaluator",
    "evaluate": "wmtp.eval.evaluator",
    "evaluate_target": "wmtp.eval.target",
    "write_report": "wmtp.eval.report",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
