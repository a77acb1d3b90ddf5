"""Tests that need a CUDA GPU carry the ``gpu`` marker and skip elsewhere, saying why.

The GPU machine runs just them: ``pytest -m gpu`` (``bench/rehearsal_gpu.sh tests``); CI, on a
CPU, reports each as skipped with its reason."""

from __future__ import annotations

import pytest
import torch


def cuda_marks(reason: str, *, capability: tuple[int, int] = (0, 0)) -> list[pytest.MarkDecorator]:
    """The marks of a test, or of a ``pytest.param``, that needs a CUDA GPU (of at least
    ``capability``): ``gpu``, and a skip with ``reason`` where there is none."""
    here = torch.cuda.is_available() and torch.cuda.get_device_capability() >= capability
    return [pytest.mark.gpu, pytest.mark.skipif(not here, reason=reason)]


def needs_cuda(reason: str, *, capability: tuple[int, int] = (0, 0)):
    """:func:`cuda_marks` as a decorator of a test function or class."""

    def mark(test):
        for each in cuda_marks(reason, capability=capability):
            test = each(test)
        return test

    return mark
