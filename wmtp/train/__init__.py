"""Training: the loop, pipelines, checkpoints, metrics and run directories.

``wmtp.train.pipeline`` documents how a pipeline plugs into the loop.
"""
