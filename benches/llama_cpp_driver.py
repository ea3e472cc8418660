"""llama.cpp (through llama-cpp-python) as the baseline of the `local_model`
benchmark: one process that loads a GGUF file once and then answers requests,
one JSON object per line on stdin, one JSON object per line on stdout.

  {"op": "prompt", "text": T}          -> {"tokens": N, "seconds": S}
      process T's tokens from an empty context (the prompt phase)
  {"op": "decode", "text": T, "n": N}  -> {"tokens": N, "seconds": S}
      process T (not timed), then decode N tokens greedily (timed)

Times are taken around llama.cpp's own calls, so Python's share is the few
microseconds of each call. Usage: llama_cpp_driver.py MODEL.gguf THREADS
"""

import json
import sys
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    llm = Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=4096,
        n_batch=512,
        verbose=False,
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        tokens = llm.tokenize(request["text"].encode(), add_bos=True, special=True)
        llm.reset()
        if request["op"] == "prompt":
            start = time.perf_counter()
            llm.eval(tokens)
            seconds = time.perf_counter() - start
            print(json.dumps({"tokens": len(tokens), "seconds": seconds}), flush=True)
        elif request["op"] == "decode":
            llm.eval(tokens)
            n = int(request["n"])
            start = time.perf_counter()
            for _ in range(n):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                llm.eval([token])
            seconds = time.perf_counter() - start
            print(json.dumps({"tokens": n, "seconds": seconds}), flush=True)
        else:
            print(json.dumps({"error": f"unknown op {request['op']!r}"}), flush=True)


if __name__ == "__main__":
    main()
