"""The Python examples (examples/python/) run against the demo's models and say what they should."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

EXAMPLES = REPO / "examples" / "python"


def run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_semantic_search_finds_the_sentence_about_batteries(model_service):
    out = run(str(EXAMPLES / "semantic_search.py"), "--service", model_service.name, "--top", "3",
              "my phone battery does not last")
    assert "embedded 390 sentences" in out
    best = out.split("'my phone battery does not last'")[1].splitlines()[1]
    assert "battery" in best.lower(), out


def test_streaming_chat_streams_and_the_async_client_agrees(model_service):
    out = run(str(EXAMPLES / "streaming_chat.py"), "--service", model_service.name, "--max-tokens", "24",
              "--once", "Name three colours.")
    assert "tokens, " in out and "AsyncClient gave the same answer: True" in out, out
