"""Semantic search over a few hundred sentences with the runtime's MiniLM embeddings and numpy.

usage: semantic_search.py [--service demo] [--model minilm] [--top 5] QUERY...

Serve the demo first (`scripts/demo.sh`, or `shm-runtime serve --config examples/demo.toml`).
The corpus is the 390 review sentences of scripts/models/sentiment_*.tsv. Each embedding answer
is a numpy view of shared memory: no copy until we stack the corpus into one matrix.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import shm_runtime

CORPUS = Path(__file__).resolve().parents[2] / "scripts" / "models"


def corpus() -> list[str]:
    lines = []
    for f in sorted(CORPUS.glob("sentiment_*.tsv")):
        lines += [line.split("\t", 1)[1].strip() for line in f.read_text().splitlines() if "\t" in line]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("query", nargs="+")
    ap.add_argument("--service", default="demo")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    texts = corpus()
    with shm_runtime.Client(a.service) as client:
        start = time.perf_counter()
        # 32 texts per request: one chunk each way, one batch on the server.
        matrix = np.vstack([np.asarray(client.embed(texts[i : i + 32], model=a.model)) for i in range(0, len(texts), 32)])
        print(f"embedded {len(texts)} sentences in {time.perf_counter() - start:.2f} s -> {matrix.shape}")
        for q in a.query:
            start = time.perf_counter()
            v = np.asarray(client.embed(q, model=a.model))[0]  # zero-copy view, L2-normalised
            scores = matrix @ v  # cosine similarity: both sides are unit vectors
            best = np.argsort(-scores)[: a.top]
            print(f"\n{q!r} ({(time.perf_counter() - start) * 1e3:.1f} ms)")
            for i in best:
                print(f"  {scores[i]:.3f}  {texts[i]}")


if __name__ == "__main__":
    main()
