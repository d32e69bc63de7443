"""Calls a gateway with the official OpenAI Python SDK and prints what it got as one JSON object.

usage: openai_sdk.py BASE_URL

The caller (cli/tests/gateway_sdk.rs) compares the answers with the runtime's own through the
Rust client. This script checks what only the SDK can see: that it parses every answer and
stream (pydantic models), that streams with include_usage carry usage only on their extra last
chunk, and that errors arrive as the SDK's exception classes. It also scrapes /metrics and parses
it with prometheus_client's text parser.
"""

import json
import sys
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

base = sys.argv[1]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
out = {}
MESSAGES = [{"role": "user", "content": "Name three colours."}]

chat = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=24)
out["chat"] = {
    "text": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
}

text, usage_chunks, finish = "", [], None
stream = client.chat.completions.create(
    model="smollm2", messages=MESSAGES, temperature=0, max_tokens=24, stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
for i, c in enumerate(chunks):
    if c.usage is not None:
        usage_chunks.append(i)
        assert c.choices == [], "the usage chunk has choices"
    for ch in c.choices:
        text += ch.delta.content or ""
        finish = ch.finish_reason or finish
assert usage_chunks == [len(chunks) - 1], f"usage on chunks {usage_chunks} of {len(chunks)}"
out["chat_stream"] = {"text": text, "finish_reason": finish,
                      "completion_tokens": chunks[-1].usage.completion_tokens}

comp = client.completions.create(model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=16)
out["completion"] = {"text": comp.choices[0].text, "finish_reason": comp.choices[0].finish_reason}

comp_text = "".join(c.choices[0].text for c in client.completions.create(
    model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=16, stream=True) if c.choices)
out["completion_stream"] = {"text": comp_text}

TEXTS = ["a cat sat on the mat", "the stock market fell today"]
# The SDK asks for base64 by default and decodes it.
default = client.embeddings.create(model="minilm", input=TEXTS)
floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
out["embeddings_base64"] = [d.embedding for d in default.data]
out["embeddings_float"] = [d.embedding for d in floats.data]

errors = {}
for case, call in {
    "unknown_model": lambda: client.chat.completions.create(model="nope", messages=MESSAGES),
    "n_2": lambda: client.chat.completions.create(model="smollm2", messages=MESSAGES, n=2),
    "bad_dimensions": lambda: client.embeddings.create(model="minilm", input="x", dimensions=10000),
}.items():
    try:
        call()
        errors[case] = "no error"
    except openai.APIStatusError as e:
        errors[case] = {"class": type(e).__name__, "status": e.status_code,
                        "message": e.body.get("message") if isinstance(e.body, dict) else str(e.body)}
out["errors"] = errors

models = client.models.list()
out["models"] = sorted(m.id for m in models.data)

scrape = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
families = {f.name: f.type for f in text_string_to_metric_families(scrape)}
out["metric_families"] = families

print(json.dumps(out))
