"""A streaming chat with SmolLM2 through the runtime, in the terminal (Ctrl-D or an empty line
ends it), plus the same answer awaited with AsyncClient.

usage: streaming_chat.py [--service demo] [--model smollm2] [--max-tokens 128] [--once TEXT]

Serve the demo first (`scripts/demo.sh`, or `shm-runtime serve --config examples/demo.toml`).
"""

from __future__ import annotations

import argparse
import asyncio

import shm_runtime


def chat(client: shm_runtime.Client, a, history: list[dict[str, str]], text: str) -> None:
    history.append({"role": "user", "content": text})
    stream = client.chat_stream(history, model=a.model, max_tokens=a.max_tokens, temperature=0)
    with stream:  # leaving early (Ctrl-C) cancels the generation in the runtime
        for piece in stream:
            print(piece, end="", flush=True)
    g = stream.generation
    print(f"\n[{g.usage.completion_tokens} tokens, {g.finish_reason}, first token after "
          f"{g.time_to_first_token * 1e3:.0f} ms]")
    history.append({"role": "assistant", "content": g.text})


async def awaited(a, text: str) -> str:
    async with shm_runtime.AsyncClient(a.service) as client:
        g = await client.chat([{"role": "user", "content": text}], model=a.model, max_tokens=a.max_tokens, temperature=0)
        return g.text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--service", default="demo")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--once", help="ask this one question, then the same with AsyncClient, and stop")
    a = ap.parse_args()
    history: list[dict[str, str]] = []
    with shm_runtime.Client(a.service) as client:
        if a.once:
            chat(client, a, history, a.once)
            same = asyncio.run(awaited(a, a.once)) == history[-1]["content"]
            print(f"AsyncClient gave the same answer: {same}")
            return
        while True:
            try:
                text = input("> ").strip()
            except EOFError:
                break
            if not text:
                break
            chat(client, a, history, text)


if __name__ == "__main__":
    main()
