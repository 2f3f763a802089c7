"""How a model is run: its KV cache (cache.py), one forward over a token tree (runner.py), what machine
measurements belong to (machine.py), and every probe and micro-benchmark, once, cached (calibrate.py).
The CPU machinery (quantized and fused linear layers, the lean forward, row-wise attention) is in cpu/."""
