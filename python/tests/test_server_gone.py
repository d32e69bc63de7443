"""A server killed under a waiting call: the call raises ServerGoneError within a second (the
documented bound; typically ~20 ms)."""

from __future__ import annotations

import threading
import time

import pytest

import shm_runtime
from conftest import Server, unique


def test_a_killed_server_raises_server_gone_within_the_bound():
    server = Server(unique("gone"), ["--model", "slow=sleep"])
    try:
        c = shm_runtime.Client(server.name, timeout=60)
        outcome: dict = {}

        def wait() -> None:
            try:
                c.generate("x", model="slow", max_tokens=1000)  # 10 s
            except BaseException as e:  # noqa: BLE001 - checked below
                outcome["error"] = e
                outcome["at"] = time.monotonic()

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.2)
        killed = time.monotonic()
        server.kill()
        t.join(timeout=10)
        assert not t.is_alive(), "the call still waits 10 s after the server died"
        assert isinstance(outcome.get("error"), shm_runtime.ServerGoneError), outcome
        took = outcome["at"] - killed
        assert took < 1.0, f"ServerGoneError came {took:.3f} s after the kill"
        with pytest.raises((shm_runtime.ServerGoneError, shm_runtime.ServiceNotFoundError)):
            c.generate("again", model="slow")
    finally:
        server.stop()
