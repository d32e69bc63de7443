"""AsyncClient: awaitable calls that do not block the event loop, async streams, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import shm_runtime


def run(coro):
    return asyncio.run(coro)


def test_many_calls_at_once_beyond_the_in_flight_limit(echo_service):
    async def main():
        threads = threading.active_count()
        async with shm_runtime.AsyncClient(echo_service.name) as c:
            prompts = [f"request {i}" for i in range(500)]
            gens = await asyncio.gather(*(c.generate(p, model="echo") for p in prompts))
            assert [g.text for g in gens] == prompts
            # No thread per call: the connection's one waiter thread is not a Python thread.
            assert threading.active_count() == threads
            e = await c.embed(["ab", "c"], model="echo")
            assert np.asarray(e).tolist() == [[97.0, 98.0], [99.0, 0.0]]
            free, total = c.pool_free()
            assert free == total - 1
        return True

    assert run(main())


def test_the_loop_runs_while_a_call_waits(echo_service):
    async def main():
        c = shm_runtime.AsyncClient(echo_service.name)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        g = await c.generate("x", model="slow", max_tokens=20)  # 20 x 10 ms
        t.cancel()
        c.close()
        assert g.text == "".join(f"t{i} " for i in range(20))
        assert ticks >= 10, f"the loop ticked {ticks} times in 200 ms"

    run(main())


def test_async_streams(echo_service):
    async def main():
        async with shm_runtime.AsyncClient(echo_service.name) as c:
            s = c.stream("stream", model="echo")
            pieces = [p async for p in s]
            assert pieces == list("stream") and s.generation.text == "stream"
            chat = [{"role": "user", "content": "hey"}]
            whole = await c.chat(chat, model="echo")
            assert "".join([p async for p in c.chat_stream(chat, model="echo")]) == whole.text

    run(main())


def test_a_cancelled_call_cancels_its_request(echo_service):
    before = echo_service.status()["errors"]["cancelled"]

    async def main():
        async with shm_runtime.AsyncClient(echo_service.name) as c:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.generate("x" * 500, model="slow", max_tokens=500), 0.1)
            s = c.stream("y" * 500, model="slow", max_tokens=500)
            assert await s.__anext__() == "t0 "
            await s.aclose()
            # The client goes on.
            assert (await c.generate("ok", model="echo")).text == "ok"

    run(main())
    deadline = time.monotonic() + 5
    while echo_service.status()["errors"]["cancelled"] < before + 2:
        assert time.monotonic() < deadline, "the server did not cancel both requests"
        time.sleep(0.01)


def test_errors_are_raised_by_the_await(echo_service):
    async def main():
        async with shm_runtime.AsyncClient(echo_service.name) as c:
            with pytest.raises(shm_runtime.ModelNotFoundError):
                await c.generate("x", model="nope")
            with pytest.raises(ValueError):
                await c.generate("x", model="echo", max_tokens=0)
            h = await c.health()
            assert h.ready and [m.name for m in h.models] == ["echo", "slow"]

    run(main())


def test_outside_a_running_loop_the_call_says_what_to_do(echo_service):
    c = shm_runtime.AsyncClient(echo_service.name)
    with pytest.raises(RuntimeError, match="running event loop"):
        c.generate("x", model="echo")
    c.close()


def test_one_client_across_successive_loops(echo_service):
    c = shm_runtime.AsyncClient(echo_service.name)

    async def once(p):
        return (await c.generate(p, model="echo")).text

    assert run(once("first")) == "first"
    assert run(once("second")) == "second"
    c.close()
