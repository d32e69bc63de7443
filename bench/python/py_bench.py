"""One round of the report's Python figures (run by the report binary, bench/src/python_work.rs).

usage: py_bench.py PART [options]; prints one JSON object.

  rtt    --service NAME --n N [--cpu K]   echo round trips through the package (Client.generate)
  pipe   --n N [--cpu K]                   the same 64 bytes through a multiprocessing Pipe to a
                                           child process that sends them back
  http   --port P --n N [--cpu K]          an echo completion through the HTTP gateway
                                           (http.client, keep-alive, JSON decoded)
  embed  --service NAME --model PATH --n N one sentence embedded through the package (to a numpy
                                           view) and by onnxruntime in this process, in turns

Latencies are in microseconds: p50 and p99 of the recorded round trips (after a warm-up).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import time

PROMPT = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
SENTENCE = "I loved this movie: the acting was wonderful and the story kept me hooked."
# Before each block of embedding requests: longer than ONNX Runtime's pool threads spin after
# their last work (as the Rust ONNX figures do).
SETTLE = 0.04
BLOCK = 20


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    at = lambda q: s[min(len(s) - 1, round((len(s) - 1) * q))] / 1000.0  # noqa: E731
    return {"p50": at(0.50), "p99": at(0.99)}


def timed(call, n: int) -> list[int]:
    for _ in range(max(100, n // 10)):
        call()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t = clock()
        call()
        out.append(clock() - t)
    return out


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def part_rtt(a) -> dict:
    import shm_runtime

    pin(a.cpu)
    with shm_runtime.Client(a.service) as c:
        assert c.generate(PROMPT, model="echo").text == PROMPT

        def call():
            c.generate(PROMPT, model="echo")

        return percentiles(timed(call, a.n))


def echo_child(conn) -> None:
    while True:
        b = conn.recv_bytes()
        if not b:
            return
        conn.send_bytes(b)


def part_pipe(a) -> dict:
    pin(a.cpu)
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.Process(target=echo_child, args=(child,), daemon=True)
    p.start()
    payload = PROMPT.encode()

    def call():
        parent.send_bytes(payload)
        parent.recv_bytes()

    try:
        return percentiles(timed(call, a.n))
    finally:
        parent.send_bytes(b"")
        p.join(5)


def part_http(a) -> dict:
    pin(a.cpu)
    conn = http.client.HTTPConnection("127.0.0.1", a.port)
    body = json.dumps({"model": "echo", "prompt": PROMPT, "max_tokens": 64, "temperature": 0})
    headers = {"Content-Type": "application/json"}

    def call():
        conn.request("POST", "/v1/completions", body, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"the gateway answered {r.status}: {data!r}")
        assert json.loads(data)["choices"][0]["text"] == PROMPT

    try:
        return percentiles(timed(call, a.n))
    finally:
        conn.close()


def part_embed(a) -> dict:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    import shm_runtime

    # The server's configuration: the same model file and tokenizer (truncation at 256 tokens,
    # no padding), graph optimisation "all", ONNX Runtime's default thread pools, mean pooling
    # with the attention mask and L2 normalisation.
    tok = Tokenizer.from_file(os.path.join(os.path.dirname(a.model), "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def direct():
        enc = tok.encode(SENTENCE)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        (hidden,) = session.run(["last_hidden_state"], feeds)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    with shm_runtime.Client(a.service, timeout=60) as c:

        def runtime():
            return np.asarray(c.embed(SENTENCE, model="minilm"))

        gap = float(np.abs(runtime() - direct()).max())
        if gap > 1e-4:
            raise RuntimeError(f"the runtime's embedding differs from onnxruntime's by {gap}")
        samples: dict[str, list[int]] = {"runtime": [], "direct": []}
        paths = {"runtime": runtime, "direct": direct}
        for f in paths.values():
            for _ in range(10):
                f()
        clock = time.perf_counter_ns
        while len(samples["direct"]) < a.n:
            for name, f in paths.items():
                time.sleep(SETTLE)
                f()
                for _ in range(BLOCK):
                    t = clock()
                    f()
                    samples[name].append(clock() - t)
        return {
            "runtime": percentiles(samples["runtime"]),
            "direct": percentiles(samples["direct"]),
            "max_abs_diff": gap,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["rtt", "pipe", "http", "embed"])
    ap.add_argument("--service")
    ap.add_argument("--port", type=int)
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--cpu", type=int)
    a = ap.parse_args()
    out = {"rtt": part_rtt, "pipe": part_pipe, "http": part_http, "embed": part_embed}[a.part](a)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
