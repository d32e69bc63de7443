"""Streams, cancellation, and many Python threads on one client with the GIL released."""

from __future__ import annotations

import gc
import threading
import time

import pytest

import shm_runtime


def wait_for(what: str, check, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within} s")
        time.sleep(0.01)


def cancelled(service) -> int:
    return service.status()["errors"]["cancelled"]


def test_a_stream_yields_the_text_then_holds_the_generation(client):
    s = client.stream("stream me", model="echo")
    pieces = list(s)
    assert "".join(pieces) == "stream me" and len(pieces) == 9
    assert s.generation is not None and s.generation.text == "stream me"
    assert s.generation.finish_reason in ("stop", "length")
    assert list(s) == []  # ended


def test_chat_stream_and_chat_agree(client):
    messages = [{"role": "user", "content": "hello"}, ("assistant", "hi")]
    whole = client.chat(messages, model="echo")
    assert "".join(client.chat_stream(messages, model="echo")) == whole.text


def test_closing_a_stream_cancels_its_request(client, echo_service):
    before = cancelled(echo_service)
    s = client.stream("x", model="slow", max_tokens=100)  # 100 x 10 ms
    assert next(s) == "t0 "
    s.close()
    wait_for("the server to cancel the closed stream", lambda: cancelled(echo_service) == before + 1)
    assert list(s) == []


def test_a_stream_dropped_unread_is_cancelled(client, echo_service):
    before = cancelled(echo_service)
    s = client.stream("x" * 100, model="slow", max_tokens=100)
    next(s)
    del s
    gc.collect()
    wait_for("the server to cancel the dropped stream", lambda: cancelled(echo_service) == before + 1)
    # The late final answer is read (and its chunk returned) by the client's next call.
    assert client.generate("next", model="echo").text == "next"
    assert client.pool_free()[0] == client.pool_free()[1]


def test_many_threads_share_one_client(client):
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(200):
                prompt = f"thread {k} request {i}"
                assert client.generate(prompt, model="echo").text == prompt
                e = client.embed([prompt], model="echo")
                assert e.row(0)[0] == ord("t")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_waiting_releases_the_gil(client):
    """A thread waiting 0.5 s for the slow model lets another Python thread run meanwhile."""
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    start = ticks
    g = client.generate("x", model="slow", max_tokens=50)  # 50 x 10 ms
    during = ticks - start
    done.set()
    counter.join()
    assert g.usage.completion_tokens == 50
    # With the GIL held through the wait the counter could not run at all.
    assert during > 10_000, f"the other thread counted {during} while this one waited"
