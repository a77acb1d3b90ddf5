"""Benchmarks: attention backends, training steps, peers, decoding. Figures come from here only.

Every benchmark warms up, repeats, and reports the median; GPU timings use CUDA events. Results are
written as JSON (every number) and a markdown table (what a person reads).
"""
