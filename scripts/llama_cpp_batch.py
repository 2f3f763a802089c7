"""What a verification costs llama.cpp, and whether its batched logits equal its one-token ones.

    python scripts/llama_cpp_batch.py [GGUF] [--rounds 8]

Loads the GGUF (default: the zoo's qwen2.5-coder-1.5b-instruct) twice through llama-cpp-python (same
threads as torch), feeds a short code prompt, then (1) 8 more tokens one at a time into one copy and in
one batch into the other, and prints the largest difference between their logits and whether the argmax
agrees on every row; (2) the median milliseconds of one forward of q = 1, 2, 4, 8 tokens after the prompt.
Speculative decoding pays when a q-token forward costs little more than a one-token one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from specdecode.zoo import source_gguf

PROMPT = b'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
MORE = b"    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"


def main() -> None:
    from llama_cpp import Llama

    parser = argparse.ArgumentParser()
    parser.add_argument("gguf", nargs="?")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    path = args.gguf or str(source_gguf("qwen2.5-coder-1.5b-instruct"))
    threads = torch.get_num_threads()
    options = dict(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, logits_all=True,
                   verbose=False)
    one, batched = Llama(**options), Llama(**options)
    prompt = one.tokenize(PROMPT)
    more = one.tokenize(MORE, add_bos=False)[:8]
    one.eval(prompt)
    batched.eval(prompt)
    for token in more:
        one.eval([token])
    batched.eval(more)
    rows = slice(len(prompt), len(prompt) + len(more))
    one_rows, batch_rows = np.array(one.scores[rows]), np.array(batched.scores[rows])  # [8, vocab] each
    print(f"{path}, {threads} threads")
    print(f"{len(more)} tokens one at a time vs in one batch: largest logit difference "
          f"{np.abs(one_rows - batch_rows).max():.4f}, same argmax on every row: "
          f"{bool((one_rows.argmax(1) == batch_rows.argmax(1)).all())}")
    for q in (1, 2, 4, 8):
        times = []
        for _ in range(args.rounds):
            batched.n_tokens = len(prompt)  # forget what followed the prompt
            batched._ctx.kv_cache_seq_rm(-1, len(prompt), -1)
            start = time.perf_counter()
            batched.eval(more[:q])
            times.append(time.perf_counter() - start)
        print(f"forward of {q} token(s) after the prompt: {statistics.median(times) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
