"""The implementations of the pipelines that need more than the plain MTP step.

``baseline``, ``ntp`` and ``ref_tuning`` run :class:`wmtp.train.pipeline.Pipeline` as it is (their
differences, the heads and the weighting, are in their descriptions in :mod:`wmtp.pipelines`);
``critic``, ``verifiable`` and ``rho1`` override its hooks in the modules here.
"""
