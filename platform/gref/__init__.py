"""GReF: generative reranking with ordered multi-token prediction (plain PyTorch/NumPy/Arrow)."""

__version__ = "0.1.0"
