"""GPU machinery: decode and verification steps at static shapes on preallocated KV buffers, captured as
CUDA graphs per bucket of fed tokens (static_steps.py). Chosen by the runner (`attention="graphs"`)."""
