"""CPU machinery: linear-layer kernels and their rounding probes (linear.py), quantized layers (quantize.py,
gguf_int4.py), fused projections (fusion.py), the lean decode forward (lean_forward.py) and row-wise
attention (rowwise_attention.py). Only the model loader and the runner choose among them."""
