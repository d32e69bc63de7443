#!/usr/bin/env python3
"""Generates models/tiny/tiny-llama.gguf, a tiny deterministic llama-architecture model for llama.cpp.

    $CACHE/venv/bin/python scripts/models/gen_tiny_gguf.py      (after scripts/setup.sh)

The model is a real llama graph (2 layers, embedding 64, 4 query heads sharing 2 KV heads, SwiGLU
feed-forward 128, RoPE, RMSNorm) with random weights from a fixed seed, and a real byte-level BPE
tokenizer (GPT-2 style, 512 tokens: 3 ChatML control tokens, the 256 bytes, 253 merges learnt from
a small built-in English text) and a ChatML chat template. Its output is gibberish, but greedy
decoding is deterministic, the generated tokens vary, and they are always printable ASCII (the
control tokens and the other bytes get logits near 0). See models/tiny/README.md.

Everything is derived from a fixed seed, so running the script again reproduces the same bytes.
After writing, the script reads the file back, checks its metadata and tensors, and runs the model
in numpy (the computation llama.cpp does, in float64): it prints the reference tokenization
and the greedy continuation of a few prompts, which llama.cpp should reproduce.
"""

import argparse
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "models" / "tiny" / "tiny-llama.gguf"

SEED = 20250611
NAME = "tiny-llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD  # 16
N_FF = 128
N_CTX_TRAIN = 256
ROPE_BASE = 10000.0
RMS_EPS = 1e-5
N_VOCAB = 512

# Control tokens, in the order and with the roles SmolLM2 gives them.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_ID = 1  # <|im_start|>
EOS_ID = 2  # <|im_end|>
PAD_ID = 0  # <|endoftext|>

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The text the BPE merges are learnt from (only its statistics matter).
CORPUS = """
The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of
Italy is Rome. A model reads a sequence of tokens and predicts the next one. Shared memory lets
several processes read the same pages without copying them, which is why a serving runtime can
hand a request to a worker and get the answer back quickly. The worker loads the model once, then
answers many requests: it tokenizes the prompt, runs the layers, samples a token, and repeats
until it reaches the end of the text or the length limit. Numbers such as 1, 2, 3, 10, 42, 100
and 2025 appear in the text too. What is the weather like today? It is sunny and warm, with a
light wind from the west. She said that the answer was in the book on the table, and he went to
find it. We should write tests for every part of the system, then run them again after each
change. Hello, world! This is a small example of English text for a tiny tokenizer. There are
many words here: time, people, year, way, day, thing, man, world, life, hand, part, child, eye,
woman, place, work, week, case, point, number, group, problem, fact, question, answer, system,
program, process, memory, request, response, server, client, thread, queue, buffer, message.
"""

# GPT-2's pre-tokenizer regex, restricted to ASCII (the corpus is ASCII, so this splits it the way
# llama.cpp's "gpt-2" pre-tokenizer does).
PRETOKENIZE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode():
    """GPT-2's map from bytes to printable characters (what byte-level BPE vocabularies store)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHARS = bytes_to_unicode()


def to_symbols(word):
    return [BYTE_CHARS[b] for b in word.encode("utf-8")]


def learn_merges(text, n_merges):
    """Plain BPE training; ties go to the lexicographically smallest pair, so it is deterministic."""
    words = Counter(tuple(to_symbols(w)) for w in PRETOKENIZE.findall(text))
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            raise SystemExit(f"the corpus yields only {len(merges)} merges, {n_merges} wanted")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    return merges


def build_vocab():
    n_merges = N_VOCAB - len(SPECIALS) - 256
    merges = learn_merges(CORPUS, n_merges)
    tokens = SPECIALS + [BYTE_CHARS[b] for b in range(256)] + [a + b for a, b in merges]
    if len(set(tokens)) != len(tokens):
        raise SystemExit("duplicate tokens in the vocabulary")
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(SPECIALS)
    )
    return tokens, types, [f"{a} {b}" for a, b in merges]


def make_weights():
    rng = np.random.default_rng(SEED)

    def mat(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float16)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    # numpy shapes are [out, in]; GGUF stores them as ne = [in, out].
    w = {"token_embd.weight": mat(N_VOCAB, N_EMBD, 1.0)}
    kv_dim = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(N_EMBD)
        # Weights larger than 1/sqrt(fan_in): attention that is far from uniform and layers that
        # outweigh the token's own embedding, so the next token depends on the context and greedy
        # decoding does not settle into repeating one token.
        w[p + "attn_q.weight"] = mat(N_EMBD, N_EMBD, 3.0 / np.sqrt(N_EMBD))
        w[p + "attn_k.weight"] = mat(kv_dim, N_EMBD, 3.0 / np.sqrt(N_EMBD))
        w[p + "attn_v.weight"] = mat(kv_dim, N_EMBD, 2.0 / np.sqrt(N_EMBD))
        w[p + "attn_output.weight"] = mat(N_EMBD, N_EMBD, 2.0 / np.sqrt(N_EMBD))
        w[p + "ffn_norm.weight"] = norm(N_EMBD)
        w[p + "ffn_gate.weight"] = mat(N_FF, N_EMBD, 2.0 / np.sqrt(N_EMBD))
        w[p + "ffn_up.weight"] = mat(N_FF, N_EMBD, 2.0 / np.sqrt(N_EMBD))
        w[p + "ffn_down.weight"] = mat(N_EMBD, N_FF, 2.0 / np.sqrt(N_FF))
    w["output_norm.weight"] = norm(N_EMBD)
    # Logits with a standard deviation of about 8: clear winners, so greedy picks do not hinge on
    # rounding (float16 matrix products, float16 KV cache, the number of threads).
    out = mat(N_VOCAB, N_EMBD, 8.0 / np.sqrt(N_EMBD))
    # The control tokens and the bytes that are not printable ASCII get logits near 0, so greedy
    # decoding never picks them: the generated text is always printable ASCII (valid UTF-8).
    out[unprintable_ids()] *= np.float16(0.02)
    w["output.weight"] = out
    return w


def unprintable_ids():
    """Ids of the control tokens and of the byte tokens outside printable ASCII (and newline)."""
    printable = set(range(0x20, 0x7F)) | {0x0A}
    ids = list(range(len(SPECIALS)))
    ids += [len(SPECIALS) + b for b in range(256) if b not in printable]
    return ids


def write(path, tokens, types, merges, weights):
    tmp = path.with_suffix(".gguf.tmp")
    wr = gguf.GGUFWriter(str(tmp), "llama")
    wr.add_name(NAME)
    wr.add_description("tiny deterministic llama-architecture test model with random weights")
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    wr.add_vocab_size(N_VOCAB)
    wr.add_context_length(N_CTX_TRAIN)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_rope_freq_base(ROPE_BASE)
    wr.add_layer_norm_rms_eps(RMS_EPS)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(BOS_ID)
    wr.add_eos_token_id(EOS_ID)
    wr.add_pad_token_id(PAD_ID)
    wr.add_add_bos_token(False)
    wr.add_add_eos_token(False)
    wr.add_add_space_prefix(False)
    wr.add_chat_template(CHAT_TEMPLATE)
    for name, arr in weights.items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# Reference: tokenizer and forward pass in numpy


def tokenize(text, token_ids, ranks):
    """llama.cpp's BPE: split with the pre-tokenizer, then merge the best-ranked pair until none is
    left. Control tokens in the text are matched as such (parse_special)."""
    ids = []
    special = re.compile("|".join(re.escape(s) for s in SPECIALS))
    pos = 0
    pieces = []
    for m in special.finditer(text):
        pieces.append((text[pos : m.start()], False))
        pieces.append((m.group(), True))
        pos = m.end()
    pieces.append((text[pos:], False))
    for piece, is_special in pieces:
        if is_special:
            ids.append(token_ids[piece])
            continue
        for word in PRETOKENIZE.findall(piece):
            sym = to_symbols(word)
            while len(sym) > 1:
                best = min(
                    range(len(sym) - 1),
                    key=lambda i: ranks.get((sym[i], sym[i + 1]), len(ranks)),
                )
                if (sym[best], sym[best + 1]) not in ranks:
                    break
                sym[best : best + 2] = [sym[best] + sym[best + 1]]
            ids.extend(token_ids[s] for s in sym)
    return ids


def detokenize(ids, tokens):
    chars_to_byte = {c: b for b, c in BYTE_CHARS.items()}
    out = bytearray()
    for i in ids:
        t = tokens[i]
        if t in SPECIALS:
            continue
        out.extend(chars_to_byte[c] for c in t)
    return out.decode("utf-8", errors="replace")


def rms_norm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w


def rope(x, positions):
    """llama.cpp's normal (non-NeoX) RoPE: rotates adjacent pairs. x: [seq, heads, HEAD_DIM]."""
    half = np.arange(0, HEAD_DIM, 2, dtype=np.float64)
    theta = positions[:, None].astype(np.float64) * ROPE_BASE ** (-half / HEAD_DIM)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(ids, w):
    """Logits [seq, N_VOCAB] of a causal llama forward pass over ids (positions 0..)."""
    f = {k: v.astype(np.float64) for k, v in w.items()}
    seq = len(ids)
    pos = np.arange(seq)
    h = f["token_embd.weight"][ids]
    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    group = N_HEAD // N_HEAD_KV
    for i in range(N_LAYER):
        p = f"blk.{i}."
        x = rms_norm(h, f[p + "attn_norm.weight"])
        q = rope((x @ f[p + "attn_q.weight"].T).reshape(seq, N_HEAD, HEAD_DIM), pos)
        k = rope((x @ f[p + "attn_k.weight"].T).reshape(seq, N_HEAD_KV, HEAD_DIM), pos)
        v = (x @ f[p + "attn_v.weight"].T).reshape(seq, N_HEAD_KV, HEAD_DIM)
        heads = []
        for hd in range(N_HEAD):
            kv = hd // group
            s = q[:, hd, :] @ k[:, kv, :].T / np.sqrt(HEAD_DIM) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            heads.append(s @ v[:, kv, :])
        h = h + np.concatenate(heads, axis=-1) @ f[p + "attn_output.weight"].T
        x = rms_norm(h, f[p + "ffn_norm.weight"])
        g = x @ f[p + "ffn_gate.weight"].T
        u = x @ f[p + "ffn_up.weight"].T
        h = h + (g / (1.0 + np.exp(-g)) * u) @ f[p + "ffn_down.weight"].T
    return rms_norm(h, f["output_norm.weight"]) @ f["output.weight"].T


def greedy(ids, w, n):
    ids = list(ids)
    out, margins = [], []
    for _ in range(n):
        logits = forward(ids, w)[-1]
        top2 = np.sort(logits)[-2:]
        margins.append(top2[1] - top2[0])
        t = int(np.argmax(logits))
        out.append(t)
        ids.append(t)
    return out, min(margins)


# ------------------------------------------------------------------------------------------------


def check(path, tokens, types, merges, weights):
    r = gguf.GGUFReader(str(path))
    f = r.fields

    def val(key):
        return f[key].contents()

    expect = {
        "general.architecture": "llama",
        "llama.block_count": N_LAYER,
        "llama.embedding_length": N_EMBD,
        "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_HEAD_KV,
        "llama.feed_forward_length": N_FF,
        "llama.context_length": N_CTX_TRAIN,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.vocab_size": N_VOCAB,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": BOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    bad = [f"{k}: {val(k)!r} != {v!r}" for k, v in expect.items() if val(k) != v]
    if val("tokenizer.ggml.tokens") != tokens or val("tokenizer.ggml.merges") != merges:
        bad.append("tokens or merges differ")
    if [int(t) for t in val("tokenizer.ggml.token_type")] != [int(t) for t in types]:
        bad.append("token types differ")
    read = {t.name: t for t in r.tensors}
    if set(read) != set(weights):
        bad.append(f"tensors differ: {sorted(set(read) ^ set(weights))}")
    for name, arr in weights.items():
        t = read.get(name)
        if t is not None and not np.array_equal(np.asarray(t.data).reshape(arr.shape), arr):
            bad.append(f"tensor {name} differs")
    if bad:
        raise SystemExit("check failed:\n  " + "\n  ".join(bad))

    token_ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    for text in ["The capital of France is", "Hello, world!"]:
        ids = tokenize(text, token_ids, ranks)
        if detokenize(ids, tokens) != text:
            raise SystemExit(f"tokenizer round trip failed for {text!r}")
        out, margin = greedy(ids, weights, 16)
        print(f"prompt {text!r}: tokens {ids}")
        print(f"  greedy 16 (no BOS): {out}")
        print(f"  text: {detokenize(out, tokens)!r}  (smallest top-1 margin {margin:.3f})")
        if len(set(out)) < 4:
            raise SystemExit("the greedy continuation hardly varies")
        if set(out) & set(unprintable_ids()):
            raise SystemExit("the greedy continuation has a control token or an unprintable byte")
    chat = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    print(f"chat prompt {chat!r}: tokens {tokenize(chat, token_ids, ranks)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args()
    tokens, types, merges = build_vocab()
    weights = make_weights()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, tokens, types, merges, weights)
    check(args.out, tokens, types, merges, weights)
    data = args.out.read_bytes()
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    print(f"vocab {len(tokens)} (3 control, 256 bytes, {len(merges)} merges), bos {BOS_ID}, eos {EOS_ID}")


if __name__ == "__main__":
    sys.exit(main())
