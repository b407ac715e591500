"""qunlearn: machine unlearning for LLMs that survives quantization."""

__version__ = "0.1.0"
