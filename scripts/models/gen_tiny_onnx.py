#!/usr/bin/env python3
"""Generates the tiny deterministic ONNX fixtures in models/tiny/ and checks them with ONNX Runtime.

    $CACHE/venv/bin/python scripts/models/gen_tiny_onnx.py      (after scripts/setup.sh)

Writes (see models/tiny/README.md for the interfaces):
    tokenizer.json         a small BERT-style WordPiece tokenizer (any ASCII text tokenizes)
    embed.onnx             a one-layer BERT-shaped encoder: last_hidden_state [batch, seq, 32]
    classify.onnx          the same encoder + masked mean pooling + a linear head: logits [batch, 3]
    classify.labels.txt    the names of classify.onnx's 3 logits, in order
    affine.onnx            y = x @ W + bias and norm = ||y||_2 per row, for raw named tensors

Everything is derived from a fixed seed, so running the script again reproduces the same bytes.
The check at the end runs each model on a padded batch of 2 sequences of different lengths and
compares the real positions with single-sequence runs (padding must not change them), checks that
outputs depend on token order and on the attention mask, and prints the largest differences.
"""

import argparse
import string
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
SEED = 20240917
HIDDEN = 32
FFN = 64
MAX_POSITIONS = 64
TYPE_VOCAB = 2
CLASSES = ["negative", "neutral", "positive"]
OPSET = 17
IR_VERSION = 8  # loadable by every ONNX Runtime since 1.10
PRODUCER = "shm-runtime gen_tiny_onnx.py"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
# Characters BertPreTokenizer splits off as punctuation (each becomes a token of its own).
PUNCTUATION = [c for c in string.punctuation]
WORDS = """
the a an and or but not no yes of to in on at by for with from into over under about after before
up down out off again then than so too very just only also more most less much many some any all
this that these those here there when where why how what which who i me my we our you your he him
his she her it its they them their one two three four five six seven eight nine ten first last
next new old good bad great best worst better worse big small long short hot cold fast slow happy
sad right wrong is are was were be been am have has had do does did will would can could should
may might say make go get see know think take come give find tell ask work call try use need want
like love hate feel look help keep show play run move live read write buy pay wait stay open close
time day year people way man woman child world life home house water food room book story friend
movie film review product price quality battery phone screen sound music restaurant hotel staff
service delivery order quick brown fox jumps lazy dog cat hello test data model token text server
client request response memory shared ring batch
""".split()
SUFFIXES = ["##es", "##ed", "##ing", "##ly", "##er", "##est", "##tion", "##ness", "##ment"]


def vocabulary():
    tokens = list(SPECIALS)
    tokens += list(string.ascii_lowercase) + list(string.digits) + PUNCTUATION
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens += SUFFIXES
    for w in WORDS:
        if w not in tokens:
            tokens.append(w)
    assert len(tokens) == len(set(tokens))
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer(vocab):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    tok.no_truncation()
    tok.no_padding()
    return tok


class Graph:
    """Collects nodes and initializers; names are prefixed and unique."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def encoder_weights(vocab_size):
    """All encoder parameters, drawn from one generator in a fixed order."""
    rng = np.random.default_rng(SEED)
    f = lambda *shape, scale: (rng.standard_normal(shape) * scale).astype(np.float32)
    w = {
        "word": f(vocab_size, HIDDEN, scale=1.0),
        "type": f(TYPE_VOCAB, HIDDEN, scale=0.5),
        "pos": f(MAX_POSITIONS, HIDDEN, scale=0.5),
    }
    for name, gain in (("q", 1.0), ("k", 1.0), ("v", 1.5), ("o", 1.5)):
        # Gains above 1 keep the attention block's contribution visible next to the residual.
        w["w" + name] = f(HIDDEN, HIDDEN, scale=gain * HIDDEN**-0.5)
        w["b" + name] = f(HIDDEN, scale=0.02)
    w["w1"] = f(HIDDEN, FFN, scale=HIDDEN**-0.5)
    w["b1"] = f(FFN, scale=0.02)
    w["w2"] = f(FFN, HIDDEN, scale=FFN**-0.5)
    w["b2"] = f(HIDDEN, scale=0.02)
    for ln in ("ln_emb", "ln_attn", "ln_out"):
        w[ln + "_g"] = (1.0 + f(HIDDEN, scale=0.1)).astype(np.float32)
        w[ln + "_b"] = f(HIDDEN, scale=0.1)
    w["cls_w"] = f(HIDDEN, len(CLASSES), scale=1.0)
    w["cls_b"] = f(len(CLASSES), scale=0.1)
    w["affine_w"] = f(8, 4, scale=0.5)
    return w


def token_inputs():
    dims = ["batch", "seq"]
    return [
        helper.make_tensor_value_info(n, TensorProto.INT64, dims)
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]


def add_encoder(g, w):
    """input_ids, attention_mask, token_type_ids -> hidden states [batch, seq, HIDDEN]."""
    c = g.const
    # Embeddings: word + token type + position (positions 0..seq-1 sliced from a table of 64).
    word = g.op("Gather", [c("emb.word", w["word"]), "input_ids"], "emb.word_out", axis=0)
    typ = g.op("Gather", [c("emb.type", w["type"]), "token_type_ids"], "emb.type_out", axis=0)
    seq = g.op("Shape", ["input_ids"], "emb.seq_len", start=1, end=2)
    zero = c("const.zero_1d", np.array([0], dtype=np.int64))
    axis0 = c("const.axis0", np.array([0], dtype=np.int64))
    pos = g.op("Slice", [c("emb.pos", w["pos"]), zero, seq, axis0], "emb.pos_out")
    x = g.op("Add", [word, typ], "emb.word_type")
    x = g.op("Add", [x, pos], "emb.sum")
    x = g.op(
        "LayerNormalization",
        [x, c("emb.ln.g", w["ln_emb_g"]), c("emb.ln.b", w["ln_emb_b"])],
        "emb.ln",
        axis=-1,
        epsilon=1e-5,
    )

    # Self-attention, one head; padded keys get -1e4 added to their scores, which makes their
    # softmax weight exactly 0 in float32, so real positions never see padding.
    def dense(inp, wname, bname, out):
        m = g.op("MatMul", [inp, c(out + ".w", w[wname])], out + ".matmul")
        return g.op("Add", [m, c(out + ".b", w[bname])], out)

    q = dense(x, "wq", "bq", "attn.q")
    k = dense(x, "wk", "bk", "attn.k")
    v = dense(x, "wv", "bv", "attn.v")
    kt = g.op("Transpose", [k], "attn.k_t", perm=[0, 2, 1])
    scores = g.op("MatMul", [q, kt], "attn.scores_raw")
    scores = g.op(
        "Mul", [scores, c("attn.scale", np.array(HIDDEN**-0.5, dtype=np.float32))], "attn.scores"
    )
    mask_f = g.op("Cast", ["attention_mask"], "attn.mask_f", to=TensorProto.FLOAT)
    one = c("const.one", np.array(1.0, dtype=np.float32))
    bias = g.op("Sub", [mask_f, one], "attn.mask_minus_one")
    bias = g.op("Mul", [bias, c("attn.mask_value", np.array(1e4, dtype=np.float32))], "attn.mask_bias")
    bias = g.op("Unsqueeze", [bias, c("const.axis1", np.array([1], dtype=np.int64))], "attn.mask_bias_3d")
    scores = g.op("Add", [scores, bias], "attn.scores_masked")
    probs = g.op("Softmax", [scores], "attn.probs", axis=-1)
    ctx = g.op("MatMul", [probs, v], "attn.context")
    attn = dense(ctx, "wo", "bo", "attn.out")
    x = g.op("Add", [x, attn], "attn.residual")
    x = g.op(
        "LayerNormalization",
        [x, c("attn.ln.g", w["ln_attn_g"]), c("attn.ln.b", w["ln_attn_b"])],
        "attn.ln",
        axis=-1,
        epsilon=1e-5,
    )

    # MLP with GELU (erf form), residual, final LayerNorm.
    h = dense(x, "w1", "b1", "mlp.fc1")
    scaled = g.op("Mul", [h, c("mlp.inv_sqrt2", np.array(2**-0.5, dtype=np.float32))], "mlp.scaled")
    erf = g.op("Erf", [scaled], "mlp.erf")
    erf1 = g.op("Add", [erf, one], "mlp.erf_plus_one")
    half = g.op("Mul", [h, c("mlp.half", np.array(0.5, dtype=np.float32))], "mlp.half_h")
    h = g.op("Mul", [half, erf1], "mlp.gelu")
    h = dense(h, "w2", "b2", "mlp.fc2")
    x = g.op("Add", [x, h], "mlp.residual")
    return g.op(
        "LayerNormalization",
        [x, c("out.ln.g", w["ln_out_g"]), c("out.ln.b", w["ln_out_b"])],
        "last_hidden_state",
        axis=-1,
        epsilon=1e-5,
    )


def finish(g, name, inputs, outputs, doc):
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    graph.doc_string = doc
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version="1",
    )
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def build_embed(w):
    g = Graph()
    add_encoder(g, w)
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    return finish(
        g,
        "tiny_embed",
        token_inputs(),
        [out],
        "Tiny BERT-shaped encoder (1 layer, hidden 32, max 64 positions); test fixture.",
    )


def build_classify(w):
    g = Graph()
    hidden = add_encoder(g, w)
    c = g.const
    mask3 = g.op("Unsqueeze", ["attn.mask_f", c("const.axis_last", np.array([-1], dtype=np.int64))], "pool.mask_3d")
    masked = g.op("Mul", [hidden, mask3], "pool.masked")
    total = g.op("ReduceSum", [masked, "const.axis1"], "pool.sum", keepdims=0)
    count = g.op("ReduceSum", [mask3, "const.axis1"], "pool.count", keepdims=0)
    count = g.op("Max", [count, c("pool.min_count", np.array(1e-9, dtype=np.float32))], "pool.count_clamped")
    mean = g.op("Div", [total, count], "pool.mean")
    scores = g.op("MatMul", [mean, c("head.w", w["cls_w"])], "head.matmul")
    g.op("Add", [scores, c("head.b", w["cls_b"])], "logits")
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])
    return finish(
        g,
        "tiny_classify",
        token_inputs(),
        [out],
        "Tiny encoder + masked mean pooling + linear head over " + ", ".join(CLASSES) + "; test fixture.",
    )


def build_affine(w):
    g = Graph()
    y = g.op("MatMul", ["x", g.const("W", w["affine_w"])], "xw")
    y = g.op("Add", [y, "bias"], "y")
    g.op("ReduceL2", [y], "norm", axes=[1], keepdims=0)
    return finish(
        g,
        "tiny_affine",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["n"]),
        ],
        "y = x @ W + bias, norm = L2 norm of each row of y; test fixture.",
    )


# ---------------------------------------------------------------------------------------------
# Checks


def encode_padded(tok, texts):
    encs = [tok.encode(t) for t in texts]
    seq = max(len(e.ids) for e in encs)
    feeds = {k: np.zeros((len(encs), seq), dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, e in enumerate(encs):
        n = len(e.ids)
        feeds["input_ids"][i, :n] = e.ids
        feeds["attention_mask"][i, :n] = e.attention_mask
        feeds["token_type_ids"][i, :n] = e.type_ids
    return feeds, [len(e.ids) for e in encs]


def single(feeds, i, n):
    return {k: v[i : i + 1, :n] for k, v in feeds.items()}


def check(out_dir, tok, w):
    import onnxruntime as ort

    sess = lambda name: ort.InferenceSession(str(out_dir / name), providers=["CPUExecutionProvider"])
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    texts = ["Hello, world!", "The quick brown fox jumps over the lazy dog; it's 42 degrees."]
    unk = tok.token_to_id("[UNK]")
    for t in texts + [string.printable]:
        expect(unk not in tok.encode(t).ids, f"[UNK] in the encoding of {t!r}")
    e = tok.encode(texts[0])
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {texts[0]!r} -> {e.tokens} {e.ids}")
    expect(e.ids[0] == 2 and e.ids[-1] == 3, "encoding is not [CLS] ... [SEP]")

    feeds, lens = encode_padded(tok, texts)
    print(f"batch of 2, lengths {lens}, padded to {feeds['input_ids'].shape[1]}")

    # embed.onnx
    embed = sess("embed.onnx")
    (batch,) = embed.run(None, feeds)
    diff = 0.0
    for i, n in enumerate(lens):
        (one,) = embed.run(None, single(feeds, i, n))
        diff = max(diff, float(np.abs(batch[i, :n] - one[0]).max()))
    print(f"embed.onnx: output {batch.shape} {batch.dtype}; padded vs single max diff {diff:.2e}")
    expect(diff <= 1e-5, f"embed.onnx: padding changes outputs by {diff:.2e}")
    # Token order matters: reverse the words between [CLS] and [SEP].
    f0 = single(feeds, 1, lens[1])
    rev = dict(f0)
    rev["input_ids"] = f0["input_ids"].copy()
    rev["input_ids"][0, 1:-1] = f0["input_ids"][0, 1:-1][::-1]
    (a,) = embed.run(None, f0)
    (b,) = embed.run(None, rev)
    order = float(np.abs(a[0, 0] - b[0, 0]).max())
    # The mask matters: hide the last real token from the others.
    masked = dict(f0)
    masked["attention_mask"] = f0["attention_mask"].copy()
    masked["attention_mask"][0, -1] = 0
    (m,) = embed.run(None, masked)
    mask_effect = float(np.abs(a[0, :-1] - m[0, :-1]).max())
    print(
        f"embed.onnx: reversing the tokens changes position 0 by up to {order:.3f}; "
        f"masking the last token changes the others by up to {mask_effect:.3f}"
    )
    expect(order > 1e-2, "embed.onnx: output does not depend on token order")
    expect(mask_effect > 1e-2, "embed.onnx: output does not depend on attention_mask")

    # classify.onnx: padded vs single, and equal to pooling + head in numpy on embed.onnx.
    classify = sess("classify.onnx")
    (logits,) = classify.run(None, feeds)
    diff = 0.0
    for i, n in enumerate(lens):
        (one,) = classify.run(None, single(feeds, i, n))
        diff = max(diff, float(np.abs(logits[i] - one[0]).max()))
    mask = feeds["attention_mask"].astype(np.float32)[:, :, None]
    ref = ((batch * mask).sum(1) / mask.sum(1)) @ w["cls_w"] + w["cls_b"]
    head = float(np.abs(logits - ref).max())
    print(f"classify.onnx: logits {logits.shape} {logits.dtype} = {np.array2string(logits, precision=3)}")
    print(f"classify.onnx: padded vs single max diff {diff:.2e}; vs numpy pooling + head {head:.2e}")
    expect(diff <= 1e-5, f"classify.onnx: padding changes logits by {diff:.2e}")
    expect(head <= 1e-4, f"classify.onnx: logits differ from the numpy head by {head:.2e}")

    # affine.onnx: against numpy, and rows independent of the batch.
    affine = sess("affine.onnx")
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 10 - 0.5
    bias = np.array([0.5, -1.0, 0.25, 2.0], dtype=np.float32)
    y, norm = affine.run(None, {"x": x, "bias": bias})
    y_ref = x @ w["affine_w"] + bias
    diff = max(float(np.abs(y - y_ref).max()), float(np.abs(norm - np.linalg.norm(y_ref, axis=1)).max()))
    y1, n1 = affine.run(None, {"x": x[1:], "bias": bias})
    rows = max(float(np.abs(y1[0] - y[1]).max()), float(abs(n1[0] - norm[1])))
    print(f"affine.onnx: y {y.shape} norm {norm.shape}; vs numpy max diff {diff:.2e}; batch vs single {rows:.2e}")
    expect(diff <= 1e-5 and rows <= 1e-5, "affine.onnx: wrong outputs")

    for name in ("tokenizer.json", "embed.onnx", "classify.onnx", "classify.labels.txt", "affine.onnx"):
        size = (out_dir / name).stat().st_size
        print(f"  {name:<20} {size:>7} bytes")
        if name.endswith(".onnx"):
            expect(size < 200_000, f"{name} is {size} bytes")
    if failures:
        sys.exit("checks failed:\n  " + "\n  ".join(failures))
    print("all checks passed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "tiny", help="output directory")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime checks")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    vocab = vocabulary()
    tok = build_tokenizer(vocab)
    tok.save(str(args.out / "tokenizer.json"), pretty=True)

    w = encoder_weights(len(vocab))
    onnx.save(build_embed(w), str(args.out / "embed.onnx"))
    onnx.save(build_classify(w), str(args.out / "classify.onnx"))
    onnx.save(build_affine(w), str(args.out / "affine.onnx"))
    (args.out / "classify.labels.txt").write_text("".join(c + "\n" for c in CLASSES), encoding="utf-8")

    if not args.no_check:
        from tokenizers import Tokenizer

        check(args.out, Tokenizer.from_file(str(args.out / "tokenizer.json")), w)


if __name__ == "__main__":
    main()
