"""Quantizers (RTN, GPTQ, AWQ, bitsandbytes) that fake-quantize a model's Linear weights, and the code flips
diagnostic."""
