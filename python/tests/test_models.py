"""Real models through the package: the same answers as the Rust client (bit-identical
embeddings and scores, the same greedy tokens), and embeddings as ONNX Runtime's Python API
computes them in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

import shm_runtime
from conftest import CACHE, binary, run_json

TEXTS = [
    "A cat sat on the mat.",
    "The stock market fell sharply today.",
    "I loved this film, it was wonderful!",
    "Terrible service, I will never come back.",
]


@pytest.fixture(scope="module")
def models(model_service):
    with shm_runtime.Client(model_service.name, timeout=120) as c:
        yield c


def rust(model_service, *args: str) -> dict:
    return run_json([str(binary(args[0])), model_service.name, *args[1:], "--json"])


def test_embeddings_are_bit_identical_to_the_rust_clients(models, model_service):
    e = models.embed(TEXTS, model="minilm")
    ours = np.asarray(e)
    assert ours.shape == (len(TEXTS), 384)
    theirs = rust(model_service, "infer", "minilm", "embed", *TEXTS, "--batch")
    expected = np.array([r["embedding"] for r in theirs["results"]], dtype=np.float32)
    assert ours.tobytes() == expected.tobytes(), np.abs(ours - expected).max()


def test_embeddings_match_onnxruntime_in_process(models):
    import onnxruntime  # noqa: F401 - installed by scripts/setup.sh into the project's venv
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(CACHE / "models/minilm/tokenizer.json"))
    enc = tok.encode_batch(TEXTS)
    ids = np.array([x.ids for x in enc], dtype=np.int64)
    mask = np.array([x.attention_mask for x in enc], dtype=np.int64)
    types = np.array([x.type_ids for x in enc], dtype=np.int64)
    session = onnxruntime.InferenceSession(str(CACHE / "models/minilm/model.onnx"))
    (hidden,) = session.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
    )
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
    reference = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    ours = np.asarray(models.embed(TEXTS, model="minilm"))
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_classifications_are_the_rust_clients(models, model_service):
    ours = models.classify(TEXTS, model="sentiment")
    theirs = rust(model_service, "infer", "sentiment", "classify", *TEXTS, "--batch")["results"]
    assert [c.label for c in ours] == [r["label"] for r in theirs]
    for c, r in zip(ours, theirs):
        assert np.float32(c.score) == np.float32(r["score"])
        assert list(c.scores) == [s["label"] for s in r["scores"]]


@pytest.mark.parametrize("chat", [False, True])
def test_greedy_tokens_are_the_rust_clients(models, model_service, chat):
    prompt = "Name three colours." if chat else "Once upon a time"
    if chat:
        ours = models.chat([{"role": "user", "content": prompt}], model="smollm2", max_tokens=24, temperature=0)
    else:
        ours = models.generate(prompt, model="smollm2", max_tokens=24, temperature=0)
    args = ["generate", "smollm2", prompt, "--max-tokens", "24", "--temperature", "0"]
    theirs = rust(model_service, *args, *(["--chat"] if chat else []))
    assert ours.tokens == theirs["tokens"]
    assert ours.text == theirs["text"]
    assert ours.finish_reason == theirs["finish_reason"]
    assert ours.usage.completion_tokens == len(ours.tokens) == theirs["completion_tokens"]
    assert ours.usage.prompt_tokens == theirs["prompt_tokens"]


def test_a_streamed_generation_is_the_whole_one(models):
    whole = models.generate("The capital of France is", model="smollm2", max_tokens=16, temperature=0)
    s = models.stream("The capital of France is", model="smollm2", max_tokens=16, temperature=0)
    assert "".join(s) == whole.text
    assert s.generation.tokens == whole.tokens


def test_json_is_not_how_answers_travel(models):
    # An embedding answer is a buffer over shared memory, not a decoded list.
    e = models.embed("x", model="minilm")
    assert memoryview(e).nbytes == 384 * 4
    assert json.dumps(e.row(0))  # and still plain floats when asked
