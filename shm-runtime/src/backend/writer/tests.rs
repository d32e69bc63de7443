//! Answers written in place are byte-for-byte the answers rkyv writes from owned values.

use rkyv::rancor;

use super::*;
use crate::protocol::{
    access_response, FinishReason, Generation, LabelScore, Tensor, TensorData, TokenLogprob,
    TopLogprob, Usage,
};

#[repr(C, align(64))]
struct Buf([u8; 16 << 10]);

fn owned(bytes: &[u8]) -> Response {
    // Archives are read from aligned memory (chunks are 64-byte aligned).
    let mut b = Box::new(Buf([0; 16 << 10]));
    b.0[..bytes.len()].copy_from_slice(bytes);
    let a = access_response(&b.0[..bytes.len()]).expect("the answer validates");
    rkyv::deserialize::<Response, rancor::Error>(a).expect("deserializes")
}

fn encoded(resp: &Response) -> Vec<u8> {
    let mut b = Box::new(Buf([0; 16 << 10]));
    let n = encode_into(resp, &mut b.0).expect("fits");
    b.0[..n].to_vec()
}

#[test]
fn an_embedding_written_in_place_is_the_archive_rkyv_writes() {
    let mut b = Box::new(Buf([0; 16 << 10]));
    let mut out = Out::in_buffer(&mut b.0, 7);
    out.embedding::<OutOfRoom>(5, |v| {
        v.copy_from_slice(&[1.0, -2.5, 3.0, 0.0, 9.75]);
        Ok(())
    })
    .unwrap();
    let want = Response {
        id: 7,
        body: Body::Embedding(vec![1.0, -2.5, 3.0, 0.0, 9.75]),
    };
    assert_eq!(out.bytes().unwrap(), encoded(&want).as_slice());
    assert_eq!(owned(out.bytes().unwrap()), want);
}

#[test]
fn embedding_rows_written_in_place_are_the_archive_rkyv_writes() {
    let mut b = Box::new(Buf([0; 16 << 10]));
    let mut out = Out::in_buffer(&mut b.0, 9);
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    out.embeddings::<OutOfRoom>(3, 4, |v| {
        v.copy_from_slice(&values);
        Ok(())
    })
    .unwrap();
    let want = Response {
        id: 9,
        body: Body::Embeddings(crate::protocol::EmbeddingRows { dim: 4, values }),
    };
    assert_eq!(out.bytes().unwrap(), encoded(&want).as_slice());
    assert_eq!(owned(out.bytes().unwrap()), want);
}

fn generation(text: &str, tokens: &[u32], hint: usize, pieces: usize) -> (Vec<u8>, Response) {
    generation_with(text, tokens, hint, pieces, &[])
}

/// Log-probabilities of `n` tokens with `k` alternatives each, with texts short (inline in the
/// archive) and long.
fn logprobs(n: usize, k: usize) -> Vec<TokenLogprob> {
    (0..n)
        .map(|i| TokenLogprob {
            logprob: -(i as f32) / 7.0,
            text: format!("chosen {i}"),
            top: (0..k)
                .map(|j| TopLogprob {
                    token: (i * 31 + j) as u32,
                    logprob: -(j as f32) - 0.25,
                    text: if j % 2 == 0 {
                        format!("t{j}")
                    } else {
                        format!("a longer piece {i}.{j}")
                    },
                })
                .collect(),
        })
        .collect()
}

fn generation_with(
    text: &str,
    tokens: &[u32],
    hint: usize,
    pieces: usize,
    logprobs: &[TokenLogprob],
) -> (Vec<u8>, Response) {
    let mut b = Box::new(Buf([0; 16 << 10]));
    let mut out = Out::in_buffer(&mut b.0, 3);
    let mut g = out.generation(tokens.len(), hint).unwrap();
    // Interleave text and token ids as a model would produce them.
    let chars: Vec<char> = text.chars().collect();
    let step = chars.len().div_ceil(pieces.max(1)).max(1);
    let mut t = 0;
    for (i, chunk) in chars.chunks(step).enumerate() {
        g.push_text(&chunk.iter().collect::<String>()).unwrap();
        if i < tokens.len() {
            g.push_tokens(&tokens[i..=i]).unwrap();
            t = i + 1;
        }
    }
    g.push_tokens(&tokens[t..]).unwrap();
    assert_eq!(g.text(), text);
    let usage = Usage {
        prompt_tokens: 4,
        generated_tokens: tokens.len() as u32,
        ttft_us: 12,
        total_us: 99,
    };
    g.finish_with_logprobs(FinishReason::Stop, usage, logprobs)
        .unwrap();
    let want = Response {
        id: 3,
        body: Body::Generation(Generation {
            text: text.to_owned(),
            tokens: tokens.to_vec(),
            finish: FinishReason::Stop,
            usage,
            logprobs: logprobs.to_vec(),
        }),
    };
    (out.bytes().unwrap().to_vec(), want)
}

#[test]
fn a_generation_written_in_place_reads_back_exactly() {
    let tokens: Vec<u32> = (100..300).collect();
    let text = "generated ".repeat(200);
    // Exact hint, 16-byte multiple: the very bytes rkyv writes.
    let (bytes, want) = generation(&text, &tokens, text.len(), 200);
    assert_eq!(bytes, encoded(&want));
    // Short text (inline in the root), no tokens, text longer than the hint (the token ids
    // move), non-ASCII text.
    for (text, tokens, hint) in [
        ("hi", &tokens[..3], 0),
        ("", &tokens[..0], 8),
        ("exactly8", &tokens[..1], 8),
        ("ninebytes", &tokens[..9], 0),
        (text.as_str(), &tokens[..], 10),
        (
            "héllo wörld, ünïcode ✓ ".repeat(20).as_str(),
            &tokens[..50],
            30,
        ),
    ] {
        let (bytes, want) = generation(text, tokens, hint, 7);
        assert_eq!(owned(&bytes), want, "text {text:?} hint {hint}");
    }
}

#[test]
fn a_generation_with_logprobs_written_in_place_is_the_archive_rkyv_writes() {
    let tokens: Vec<u32> = (100..140).collect();
    let text = "generated ".repeat(40);
    let lp = logprobs(tokens.len(), 5);
    let (bytes, want) = generation_with(&text, &tokens, text.len(), 40, &lp);
    assert_eq!(bytes, encoded(&want));
    // Other shapes read back equal: no alternatives, short text, one token.
    for (text, n, k, hint) in [("hi", 3, 0, 0), ("x", 1, 20, 8), ("héllo wörld", 9, 2, 3)] {
        let (bytes, want) = generation_with(text, &tokens[..n], hint, 3, &logprobs(n, k));
        assert_eq!(
            owned(&bytes),
            want,
            "text {text:?} {n} tokens, {k} alternatives"
        );
    }
}

#[test]
fn logprobs_beyond_the_chunk_move_the_answer_to_a_larger_one() {
    use shm_ring::pool::{PoolConfig, SizeClass};
    use shm_ring::Region;
    let config = PoolConfig {
        classes: vec![
            SizeClass {
                chunk_size: 1024,
                count: 2,
            },
            SizeClass {
                chunk_size: 64 << 10,
                count: 2,
            },
        ],
        max_owners: 4,
        quota: 64,
        class_share: 100,
    };
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config).unwrap();
    let pool = Pool::attach(&region).unwrap();
    let owner = pool.register_owner().unwrap();
    let mut out = Out::in_pool(&pool, owner, 4);
    let mut g = out.generation(20, 64).unwrap();
    for i in 0..20 {
        g.push(i, "word ").unwrap();
    }
    let lp = logprobs(20, 10);
    let usage = Usage::default();
    g.finish_with_logprobs(FinishReason::Length, usage, &lp)
        .unwrap();
    let want = Response {
        id: 4,
        body: Body::Generation(Generation {
            text: "word ".repeat(20),
            tokens: (0..20).collect(),
            finish: FinishReason::Length,
            usage,
            logprobs: lp,
        }),
    };
    assert!(out.bytes().unwrap().len() > 1024);
    assert_eq!(owned(out.bytes().unwrap()), want);
    drop(out);
    assert_eq!(pool.stats().in_use(), 0, "the first chunk went back");
}

#[test]
fn text_beyond_the_chunk_is_refused_not_written_past_it() {
    let mut b = vec![0u8; 1024 + 64];
    let at = b.as_ptr().align_offset(64);
    let mut out = Out::in_buffer(&mut b[at..at + 1024], 1);
    let mut g = out.generation(10, 16).unwrap();
    let piece = "x".repeat(100);
    let mut res = Ok(());
    for _ in 0..20 {
        res = g.push_text(&piece);
        if res.is_err() {
            break;
        }
    }
    assert!(matches!(res, Err(OutOfRoom(_))), "{res:?}");
    assert!(matches!(g.push_tokens(&[0; 11]), Err(OutOfRoom(_))));
}

#[test]
fn tensors_written_in_place_read_back_exactly() {
    let want = Response {
        id: 11,
        body: Body::Tensors(vec![
            Tensor {
                name: "a_long_tensor_name".into(),
                shape: vec![2, 3],
                data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            },
            Tensor {
                name: "ids".into(),
                shape: vec![3],
                data: TensorData::I64(vec![-1, 0, i64::MAX]),
            },
            Tensor {
                name: "b".into(),
                shape: vec![],
                data: TensorData::U8(vec![42]),
            },
            Tensor {
                name: "i".into(),
                shape: vec![1, 1],
                data: TensorData::I32(vec![-7]),
            },
        ]),
    };
    let mut b = Box::new(Buf([0; 16 << 10]));
    let mut out = Out::in_buffer(&mut b.0, 11);
    let payload = TensorsWriter::bytes_for::<f32>("a_long_tensor_name", 2, 6)
        + TensorsWriter::bytes_for::<i64>("ids", 1, 3)
        + TensorsWriter::bytes_for::<u8>("b", 0, 1)
        + TensorsWriter::bytes_for::<i32>("i", 2, 1);
    out.tensors::<OutOfRoom>(payload, |w| {
        w.add::<f32, OutOfRoom>("a_long_tensor_name", &[2, 3], |d| {
            d.copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            Ok(())
        })?;
        w.add::<i64, OutOfRoom>("ids", &[3], |d| {
            d.copy_from_slice(&[-1, 0, i64::MAX]);
            Ok(())
        })?;
        w.add::<u8, OutOfRoom>("b", &[], |d| {
            d[0] = 42;
            Ok(())
        })?;
        w.add::<i32, OutOfRoom>("i", &[1, 1], |d| {
            d[0] = -7;
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(owned(out.bytes().unwrap()), want);
}

#[test]
fn an_owned_body_is_serialized_once() {
    let mut b = Box::new(Buf([0; 16 << 10]));
    let mut out = Out::in_buffer(&mut b.0, 5);
    let body = Body::Classification(vec![LabelScore {
        label: "positive".into(),
        score: 0.9,
    }]);
    out.body(body.clone()).unwrap();
    assert_eq!(owned(out.bytes().unwrap()), Response { id: 5, body });
}
