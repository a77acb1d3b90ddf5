"""Typer commands, one module per area; ``wmtp.cli`` assembles them.

Each module defines ``register(app)``. Command modules never import torch at module level, so
``wmtp validate``/``diff``/``show``/``schema`` stay fast: heavy imports go inside the command.
"""
