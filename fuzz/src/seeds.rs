//! Seed corpora: valid requests for `request`, descriptor records that reach every branch of the
//! server's path for `descriptor`, and short command scripts for `headers`. Written at run time
//! (see `scripts/fuzz.sh`), so nothing binary is kept in the repository.

use shm_runtime::protocol::{
    encode_request, ChatMessage, Descriptor, DescriptorKind, Input, Params, Request, Task, Tensor,
    TensorData,
};

use crate::headers::{MPMC, PATCH_BYTES, PATCH_WORD, POOL, SERVICE, SPSC};

/// Valid requests of every task, input kind and parameter shape.
pub fn requests() -> Vec<Request> {
    let base = Request {
        id: 42,
        model: "echo".into(),
        task: Task::Generate,
        input: Input::Text("hello world".into()),
        params: Params::default(),
    };
    let tensor = |name: &str, shape: Vec<u64>, data: TensorData| Tensor {
        name: name.into(),
        shape,
        data,
    };
    vec![
        base.clone(),
        Request {
            task: Task::Embed,
            input: Input::Tokens((0..40).collect()),
            ..base.clone()
        },
        Request {
            task: Task::Embed,
            input: Input::Texts(vec!["one".into(), "two texts".into(), "x".repeat(40)]),
            ..base.clone()
        },
        Request {
            task: Task::Classify,
            input: Input::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "héllo ✓".into(),
                },
            ]),
            ..base.clone()
        },
        Request {
            task: Task::Tensors,
            input: Input::Tensors(vec![
                tensor("x", vec![2, 3], TensorData::F32(vec![1.5; 6])),
                tensor("ids", vec![4], TensorData::I64(vec![-1, 0, 1, 2])),
                tensor("mask", vec![1, 2], TensorData::I32(vec![1, 0])),
                tensor("raw", vec![3], TensorData::U8(vec![7, 8, 9])),
            ]),
            ..base.clone()
        },
        Request {
            task: Task::Tensors,
            input: Input::Tensors(vec![tensor("empty", vec![0, 5], TensorData::F32(vec![]))]),
            ..base.clone()
        },
        Request {
            id: u64::MAX,
            params: Params {
                max_tokens: 5,
                temperature: 0.7,
                top_p: 0.9,
                top_k: 40,
                seed: 1234 | (1 << 40),
                repetition_penalty: 1.1,
                min_p: 0.05,
                presence_penalty: 0.5,
                frequency_penalty: -0.5,
                stop: vec!["\n".into(), "END".into()],
                logprobs: 5,
                stream: true,
                timeout_ms: 1000,
                priority: 0,
            },
            ..base.clone()
        },
        Request {
            task: Task::Generate,
            input: Input::Tokens(vec![65, 66, 0x1F600]),
            params: Params {
                stream: true,
                priority: 3,
                ..Params::default()
            },
            ..base.clone()
        },
        Request {
            task: Task::Embed,
            input: Input::Text("x".repeat(1000)),
            ..base
        },
    ]
}

/// `(name, bytes)` of the `request` seeds: each request's head and archive, as a client writes them
/// into a chunk.
pub fn request_seeds() -> Vec<(String, Vec<u8>)> {
    requests()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut buf = crate::aligned(16 << 10);
            let buf = crate::bytes_mut(&mut buf);
            let n = encode_request(r, buf).expect("a seed fits 16 KiB");
            (format!("request-{i}"), buf[..n].to_vec())
        })
        .collect()
}

fn record(sel: u8, who: u8, path: u8, answer: u8, raw_owner: u32, d: [u64; 2]) -> Vec<u8> {
    let mut r = vec![sel, who, path, answer];
    r.extend_from_slice(&raw_owner.to_le_bytes());
    r.extend_from_slice(&d[0].to_le_bytes());
    r.extend_from_slice(&d[1].to_le_bytes());
    r
}

/// `(name, bytes)` of the `descriptor` seeds.
pub fn descriptor_seeds() -> Vec<(String, Vec<u8>)> {
    let lens = crate::descriptor::initial_requests()
        .iter()
        .map(|r| {
            let mut buf = crate::aligned(4096);
            encode_request(r, crate::bytes_mut(&mut buf)).expect("fits") as u32
        })
        .collect::<Vec<_>>();
    let req = |k: usize, len: u32| {
        Descriptor::new(DescriptorKind::Request, 0, len, 7 + k as u32).to_words()
    };
    let mut seeds = Vec::new();
    // Each of client A's requests, sent properly (known id, no change), answered.
    let mut all = Vec::new();
    for (k, &len) in lens.iter().enumerate() {
        let r = record(0x80 | k as u8, 1, 0, 16, 0, req(k, len));
        seeds.push((format!("descriptor-valid-{k}"), r.clone()));
        all.extend(r);
    }
    seeds.push(("descriptor-all".into(), all));
    // A stale resend, a wrong owner, a too long length, a cancel, an unknown kind.
    let mut mixed = record(0x80, 1, 0, 1, 0, req(0, lens[0]));
    mixed.extend(record(0x80, 1, 0, 1, 0, req(0, lens[0])));
    mixed.extend(record(0x81, 2, 0, 1, 0, req(1, lens[1])));
    mixed.extend(record(0x82, 1, 0, 1, 0, req(2, 1 << 20)));
    mixed.extend(record(0x83, 2, 0, 1, 0, req(3, 256)));
    mixed.extend(record(
        0,
        1,
        0,
        0,
        0,
        Descriptor::new(DescriptorKind::Cancel, 0, 0, 9).to_words(),
    ));
    mixed.extend(record(0, 9, 0, 0, 77, [0, 0xEE << 56]));
    seeds.push(("descriptor-mixed".into(), mixed));
    // The client path: answers to A, then releasing them; inline errors.
    let mut client = record(0x80, 1, 0, 40, 0, req(0, lens[0]));
    client.extend(record(
        0,
        1,
        1,
        0,
        0,
        Descriptor::new(DescriptorKind::InlineError, 0, 3, 1).to_words(),
    ));
    client.extend(record(
        0x80,
        1,
        1,
        0,
        0,
        Descriptor::new(DescriptorKind::Final, 0, 64, 1).to_words(),
    ));
    client.extend(record(0x84, 0, 0, 0, 0, req(4, 16)));
    seeds.push(("descriptor-client".into(), client));
    seeds
}

/// `(name, bytes)` of the `headers` seeds: for each structure, operations alone, then the same
/// with a few patches of its header in between.
pub fn headers_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // SPSC, capacity 4: push, push, pop, push_slice 5, pop_into 9, queries, re-attach both.
    let ops: Vec<u8> = vec![4, 4, 5, 6, 5, 7, 9, 10, 2, 3, 4, 8, 9, 11, 0, 4, 2, 4];
    seeds.push(("headers-spsc".into(), [vec![SPSC, 2], ops.clone()].concat()));
    let patched = [
        vec![SPSC, 2, 4, 4],
        vec![PATCH_WORD, 16, 0, 0], // tail += 1
        vec![5, 5, 5],              // pops
        vec![PATCH_WORD, 32, 0, 3], // head := next u64
        vec![0xFF; 8],
        vec![4, 5, 10, 2, 3, 4, 5],
        vec![PATCH_BYTES, 8, 0, 3, 0, 0, 0, 0], // capacity
        vec![2, 3, 4, 5],
    ]
    .concat();
    seeds.push(("headers-spsc-patched".into(), patched));
    // MPMC, capacity 8, 3 participants.
    let ops: Vec<u8> = vec![
        2 | 0x80,
        3 | 0x80,
        4,
        5,
        4 | 0x80,
        6,
        6 | 0x80,
        7,
        8,
        9,
        6,
        6,
        6,
        10,
        0,
    ];
    seeds.push(("headers-mpmc".into(), [vec![MPMC, 2, 2], ops].concat()));
    let patched = [
        vec![MPMC, 1, 2, 4, 4, 4],
        vec![PATCH_WORD, 16, 0, 0], // tail += 1
        vec![4, 6, 6, 6],
        vec![PATCH_WORD, 90, 0, 3], // a slot stamp := next u64
        vec![0, 0, 0, 0, 0, 0x40, 0, 0],
        vec![4, 6, 8, 7, 2, 3, 6],
    ]
    .concat();
    seeds.push(("headers-mpmc-patched".into(), patched));
    // Pool: register two owners, loan, into_id, adopt, release, reclaim, stats.
    let ops: Vec<u8> = vec![
        3, 3, 5, 0, 100, 0, 5, 1, 0, 16, 7, 0, 9, 0, 0, 1, 6, 0, 10, 0, 1, 11, 0, 1, 8, 0, 9, 14,
        0, 12, 0, 13, 15, 0, 1, 0, 4, 1, 2, 3,
    ];
    seeds.push(("headers-pool".into(), [vec![POOL, 0], ops.clone()].concat()));
    seeds.push(("headers-pool-3".into(), [vec![POOL, 1], ops].concat()));
    let patched = [
        vec![POOL, 0, 3, 5, 0, 10, 0, 5, 0, 10, 0],
        vec![PATCH_WORD, 16, 0, 0], // class 0 free-list head += 1
        vec![5, 0, 10, 0, 6, 0, 13, 14, 0],
        vec![PATCH_BYTES, 12, 0, 3, 9, 0, 0, 0], // max_owners
        vec![2, 3, 5, 0, 1, 0],
    ]
    .concat();
    seeds.push(("headers-pool-patched".into(), patched));
    // Service: open, patch the capacity and the pool offset, open again.
    let patched = [
        vec![SERVICE, 1, 1, 1, 2, 3],
        vec![PATCH_BYTES, 20, 0, 3, 64, 0, 0, 0],
        vec![2, 1],
        vec![PATCH_WORD, 5, 0, 0],
        vec![2, 0],
    ]
    .concat();
    seeds.push(("headers-service".into(), patched));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for (_, s) in request_seeds() {
            crate::request::run(&s);
        }
        for (_, s) in descriptor_seeds() {
            crate::descriptor::run(&s);
        }
        for (_, s) in headers_seeds() {
            crate::headers::run(&s);
        }
    }

    /// Each seed with bytes overwritten (xorshift choices, reproducible): the harnesses must hold
    /// on inputs near the valid ones too, not only on the seeds themselves.
    #[test]
    fn mutated_seeds_run_clean() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let targets: [(fn() -> Vec<(String, Vec<u8>)>, fn(&[u8])); 3] = [
            (request_seeds, crate::request::run),
            (descriptor_seeds, crate::descriptor::run),
            (headers_seeds, crate::headers::run),
        ];
        for (seeds, run) in targets {
            for (_, seed) in seeds() {
                for _ in 0..64 {
                    let mut s = seed.clone();
                    for _ in 0..1 + next() % 4 {
                        let at = (next() % s.len().max(1) as u64) as usize;
                        if let Some(b) = s.get_mut(at) {
                            *b = next() as u8;
                        }
                    }
                    run(&s);
                }
            }
        }
    }

    #[test]
    fn request_seeds_are_valid_requests() {
        let limits = shm_runtime::protocol::Limits::default();
        for (name, s) in request_seeds() {
            let mut buf = crate::aligned(s.len());
            let b = crate::bytes_mut(&mut buf);
            b[..s.len()].copy_from_slice(&s);
            shm_runtime::protocol::access_request_chunk(&b[..s.len()], &limits)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
