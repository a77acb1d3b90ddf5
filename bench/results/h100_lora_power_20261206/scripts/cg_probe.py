"""Probe: wmtp's CLI with the per-head MTP loss in one backward (as under FSDP), so that
Inductor's CUDA graph trees see forward-then-backward per micro-batch. Not shipped."""
import dataclasses
import os
import sys

from wmtp.train import loop

_orig = loop.Trainer._loss_config


def _one_backward(self):
    cfg = _orig(self)
    if os.environ.get("PROBE_ONE_BACKWARD") == "1" and cfg.strategy == "per_head":
        cfg = dataclasses.replace(cfg, one_backward=True)
    return cfg


loop.Trainer._loss_config = _one_backward
from wmtp.cli import main  # noqa: E402

sys.argv = ["wmtp", *sys.argv[1:]]
main()
