"""wmtp: Weighted Multi-Token Prediction for code LLMs."""

__version__ = "0.1.0"
