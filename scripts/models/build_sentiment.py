#!/usr/bin/env python3
"""Builds the MiniLM sentiment classifier: the all-MiniLM-L6-v2 int8 encoder with a trained head.

The output model is the encoder graph, unchanged, extended by graph surgery with

    mean  = sum_s(last_hidden_state[b, s, :] * mask[b, s]) / max(sum_s mask[b, s], 1e-9)
    emb   = mean / max(||mean||_2, 1e-12)              (the sentence-transformers embedding)
    logits = emb @ W + b                                (W: [384, 2], b: [2])

Inputs (int64 [batch, sequence]): input_ids, attention_mask, token_type_ids.
Outputs: logits float32 [batch, 2] (first), and the encoder's own last_hidden_state
float32 [batch, sequence, 384] (kept, unchanged). labels.txt names the logits' columns in order:
negative, positive.

The head is an L2-regularised logistic regression fitted with Newton's method (deterministic) on
the embeddings of sentiment_train.tsv (label<TAB>sentence); the regularisation strength is chosen
by 5-fold cross-validation on the training set alone, then sentiment_heldout.tsv is scored once.
The script checks that the merged model's logits match the numpy head applied to the original
encoder's output, and that last_hidden_state is unchanged.

    python scripts/models/build_sentiment.py --encoder $CACHE/models/minilm/model.onnx \\
        --tokenizer $CACHE/models/minilm/tokenizer.json --out $CACHE/models/minilm-sentiment

Writes model.onnx, tokenizer.json (a copy of --tokenizer) and labels.txt into --out.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
LABELS = ["negative", "positive"]
MAX_LENGTH = 128
BATCH = 32
LAMBDAS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
FOLDS = 5


def read_tsv(path):
    labels, texts = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in LABELS or not text.strip():
            sys.exit(f"{path}:{n}: expected '<{'|'.join(LABELS)}>\\t<sentence>'")
        labels.append(LABELS.index(label))
        texts.append(text.strip())
    return np.array(labels, dtype=np.int64), texts


def load_tokenizer(path):
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=MAX_LENGTH)
    tok.no_padding()
    return tok


def encode(tok, texts):
    """Token ids, attention mask and token type ids of a batch, right-padded with 0 to its longest."""
    encs = tok.encode_batch(texts)
    seq = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n] = e.ids
        mask[i, :n] = e.attention_mask
        types[i, :n] = e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def pool(hidden, mask):
    """Masked mean over the sequence, then L2 normalisation (float32, as the graph computes it)."""
    m = mask.astype(np.float32)[:, :, None]
    mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
    norm = np.sqrt((mean * mean).sum(axis=1, keepdims=True))
    return (mean / np.maximum(norm, np.float32(1e-12))).astype(np.float32)


def embed(sess, tok, texts):
    out = []
    for i in range(0, len(texts), BATCH):
        feeds = encode(tok, texts[i : i + BATCH])
        (hidden,) = sess.run(["last_hidden_state"], feeds)
        out.append(pool(hidden, feeds["attention_mask"]))
    return np.concatenate(out)


def fit_logistic(x, y, lam, iters=50):
    """Binary logistic regression, L2 penalty lam * ||w||^2 / 2 on the weights (not the bias),
    minimised with Newton's method in float64. Returns (w [d], b)."""
    x = x.astype(np.float64)
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, lam)
    reg[-1] = 0.0
    for _ in range(iters):
        z = xa @ theta
        p = 1.0 / (1.0 + np.exp(-z))
        grad = xa.T @ (p - y) + reg * theta
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta[:-1], theta[-1]


def choose_lambda(x, y):
    """The regularisation strength with the best 5-fold cross-validated accuracy (ties: lower
    log loss). Folds are fixed: example i goes to fold i % 5."""
    folds = np.arange(len(y)) % FOLDS
    best = None
    for lam in LAMBDAS:
        correct, loss = 0, 0.0
        for f in range(FOLDS):
            tr, te = folds != f, folds == f
            w, b = fit_logistic(x[tr], y[tr], lam)
            z = x[te].astype(np.float64) @ w + b
            correct += int(((z > 0).astype(np.int64) == y[te]).sum())
            loss += float(np.logaddexp(0.0, np.where(y[te] == 1, -z, z)).sum())
        acc = correct / len(y)
        print(f"  lambda {lam:<5} cross-validated accuracy {acc:.3f}  log loss {loss / len(y):.4f}")
        key = (acc, -loss)
        if best is None or key > best[0]:
            best = (key, lam)
    return best[1]


def head_matrices(w, b):
    """Two-column logits whose softmax is the logistic model: [-z/2, z/2] with z = x.w + b."""
    weight = np.stack([-w / 2, w / 2], axis=1).astype(np.float32)  # [d, 2]
    bias = np.array([-b / 2, b / 2], dtype=np.float32)  # [2]
    return weight, bias


def merge(encoder_path, weight, bias):
    """The encoder graph plus pooling, normalisation and the linear head; output `logits` first."""
    model = onnx.load(str(encoder_path))
    g = model.graph
    opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if opset < 13:
        sys.exit(f"{encoder_path}: opset {opset}; need >= 13 (ReduceSum with axes as an input)")
    names = {i.name for i in g.input}
    outs = {o.name for o in g.output}
    for need in ("input_ids", "attention_mask", "token_type_ids"):
        if need not in names:
            sys.exit(f"{encoder_path}: no input named {need}")
    if "last_hidden_state" not in outs:
        sys.exit(f"{encoder_path}: no output named last_hidden_state")

    p = "sentiment_head/"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis1"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axis_last"),
            numpy_helper.from_array(np.array(1e-9, dtype=np.float32), p + "min_count"),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), p + "min_norm"),
            numpy_helper.from_array(weight, p + "weight"),
            numpy_helper.from_array(bias, p + "bias"),
        ]
    )
    n = lambda op, ins, outs_, **kw: helper.make_node(op, ins, outs_, name=p + outs_[0].split("/")[-1], **kw)
    g.node.extend(
        [
            n("Cast", ["attention_mask"], [p + "mask_f"], to=TensorProto.FLOAT),
            n("Unsqueeze", [p + "mask_f", p + "axis_last"], [p + "mask_3d"]),
            n("Mul", ["last_hidden_state", p + "mask_3d"], [p + "masked"]),
            n("ReduceSum", [p + "masked", p + "axis1"], [p + "sum"], keepdims=0),
            n("ReduceSum", [p + "mask_3d", p + "axis1"], [p + "count"], keepdims=0),
            n("Max", [p + "count", p + "min_count"], [p + "count_clamped"]),
            n("Div", [p + "sum", p + "count_clamped"], [p + "mean"]),
            n("Mul", [p + "mean", p + "mean"], [p + "square"]),
            n("ReduceSum", [p + "square", p + "axis1"], [p + "square_sum"], keepdims=1),
            n("Sqrt", [p + "square_sum"], [p + "norm"]),
            n("Max", [p + "norm", p + "min_norm"], [p + "norm_clamped"]),
            n("Div", [p + "mean", p + "norm_clamped"], [p + "embedding"]),
            n("MatMul", [p + "embedding", p + "weight"], [p + "scores"]),
            n("Add", [p + "scores", p + "bias"], ["logits"]),
        ]
    )
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    g.output.insert(0, logits)
    g.doc_string = (
        "all-MiniLM-L6-v2 (int8) sentiment classifier: masked mean pooling of last_hidden_state, "
        "L2 normalisation, linear head. Outputs logits [batch, 2] over (negative, positive) and "
        "the encoder's last_hidden_state [batch, sequence, 384]."
    )
    del model.metadata_props[:]
    for k, v in {
        "labels": ",".join(LABELS),
        "pooling": "mean (attention_mask), then L2 normalisation",
        "max_length": str(MAX_LENGTH),
    }.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", required=True, help="the MiniLM encoder (model.onnx)")
    ap.add_argument("--tokenizer", required=True, help="its tokenizer.json")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", default=HERE / "sentiment_train.tsv")
    ap.add_argument("--heldout", default=HERE / "sentiment_heldout.tsv")
    ap.add_argument("--min-heldout-accuracy", type=float, default=0.9)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = load_tokenizer(args.tokenizer)
    enc = session(args.encoder)
    y_train, train = read_tsv(args.train)
    y_held, held = read_tsv(args.heldout)
    overlap = set(train) & set(held)
    if overlap:
        sys.exit(f"held-out sentences also in the training set: {sorted(overlap)[:3]}")
    print(f"training sentences {len(train)} ({int(y_train.sum())} positive), held-out {len(held)}")

    x_train = embed(enc, tok, train)
    x_held = embed(enc, tok, held)
    lam = choose_lambda(x_train, y_train)
    w, b = fit_logistic(x_train, y_train, lam)
    weight, bias = head_matrices(w, b)
    print(f"chosen lambda {lam}; |w| = {np.linalg.norm(w):.3f}, b = {b:.4f}")

    model = merge(args.encoder, weight, bias)
    model_path = out / "model.onnx"
    onnx.save(model, str(model_path))
    shutil.copyfile(args.tokenizer, out / "tokenizer.json")
    (out / "labels.txt").write_text("".join(l + "\n" for l in LABELS), encoding="utf-8")

    # The merged model against the numpy head on the original encoder, batch by batch.
    merged = session(model_path)
    max_logit_diff = 0.0
    max_hidden_diff = 0.0
    accuracy = {}
    for name, texts, y in (("train", train, y_train), ("held-out", held, y_held)):
        preds = []
        for i in range(0, len(texts), BATCH):
            feeds = encode(tok, texts[i : i + BATCH])
            logits, hidden = merged.run(["logits", "last_hidden_state"], feeds)
            (hidden_ref,) = enc.run(["last_hidden_state"], feeds)
            ref = pool(hidden_ref, feeds["attention_mask"]) @ weight + bias
            max_logit_diff = max(max_logit_diff, float(np.abs(logits - ref).max()))
            max_hidden_diff = max(max_hidden_diff, float(np.abs(hidden - hidden_ref).max()))
            preds.append(logits.argmax(axis=1))
        preds = np.concatenate(preds)
        accuracy[name] = float((preds == y).mean())
        wrong = [t for t, p_, t_ in zip(texts, preds, y) if p_ != t_]
        print(f"{name} accuracy {accuracy[name]:.4f} ({len(y) - len(wrong)}/{len(y)})")
        for t in wrong:
            print(f"  misclassified: {t}")
    print(f"merged model vs numpy head: max |logits diff| {max_logit_diff:.2e}")
    print(f"merged model vs encoder: max |last_hidden_state diff| {max_hidden_diff:.2e}")
    size = model_path.stat().st_size
    print(f"wrote {model_path} ({size} bytes), labels.txt, tokenizer.json")

    if max_logit_diff > 1e-4:
        sys.exit(f"merged logits differ from the numpy head by {max_logit_diff:.2e} (> 1e-4)")
    if max_hidden_diff > 1e-5:
        sys.exit(f"merged last_hidden_state differs from the encoder's by {max_hidden_diff:.2e}")
    if accuracy["held-out"] < args.min_heldout_accuracy:
        sys.exit(
            f"held-out accuracy {accuracy['held-out']:.3f} < {args.min_heldout_accuracy}; "
            "improve sentiment_train.tsv"
        )


if __name__ == "__main__":
    main()
