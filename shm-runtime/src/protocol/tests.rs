//! Encoding, validation and descriptors.

use super::*;

fn request(input: Input) -> Request {
    Request {
        id: 7,
        model: "echo".into(),
        task: Task::Generate,
        input,
        params: Params::default(),
    }
}

#[repr(C, align(16))]
struct Aligned([u8; 4096]);

#[test]
fn encode_in_place_then_access_and_check() {
    let mut buf = Aligned([0; 4096]);
    let req = request(Input::Tokens((0..100).collect()));
    let n = encode_into(&req, &mut buf.0).unwrap();
    let a = access_request(&buf.0[..n]).unwrap();
    assert_eq!(a.id, 7);
    check_request(a, &Limits::default()).unwrap();
    match &a.input {
        ArchivedInput::Tokens(t) => {
            assert_eq!(tokens_native(t).iter().sum::<u32>(), 4950)
        }
        other => panic!("wrong input {other:?}"),
    }
}

#[test]
fn a_too_small_buffer_is_an_error_not_a_panic() {
    let mut small = Aligned([0; 4096]);
    let req = request(Input::Text("x".repeat(5000)));
    assert!(encode_into(&req, &mut small.0).is_err());
}

#[test]
fn garbage_and_truncation_are_refused() {
    let mut buf = Aligned([0; 4096]);
    // Longer than an inline string: the text is reached through a relative pointer and a
    // length, both of which a flip may corrupt.
    let text = "hello, shared memory";
    let req = request(Input::Text(text.into()));
    let n = encode_into(&req, &mut buf.0).unwrap();
    for cut in [0, 1, n / 2, n - 1] {
        assert!(access_request(&buf.0[..cut]).is_err(), "cut {cut}");
    }
    let text_at = buf.0[..n]
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .expect("the text is in the archive");
    let mut refused = 0;
    for i in 0..n {
        let mut b = Aligned([0; 4096]);
        b.0[..n].copy_from_slice(&buf.0[..n]);
        b.0[i] ^= 0xFF;
        match access_request(&b.0[..n]) {
            Err(e) => {
                assert!(e.message.contains("not a valid archive"), "byte {i}: {e}");
                refused += 1;
            }
            Ok(a) => {
                // A flipped ASCII byte is never valid UTF-8.
                assert!(
                    !(text_at..text_at + text.len()).contains(&i),
                    "byte {i} of the text flipped into invalid UTF-8 was accepted"
                );
                // What bytecheck accepts is a changed scalar (id, a parameter), never an
                // archive that points elsewhere: the strings still read the same. (The
                // model name is inline, ended by 0xFF padding: a flipped pad byte lengthens
                // it with a NUL.)
                assert_eq!(a.model.trim_end_matches('\0'), "echo", "byte {i}");
                match &a.input {
                    ArchivedInput::Text(t) => assert_eq!(t.as_str(), text, "byte {i}"),
                    other => panic!("byte {i}: the input became {other:?}"),
                }
            }
        }
    }
    assert!(refused >= text.len() + 4, "{refused} of {n} flips refused");
}

#[test]
fn semantic_limits_name_the_rule() {
    let mut buf = Aligned([0; 4096]);
    let cases: Vec<(Request, &str)> = vec![
        (
            Request {
                params: Params {
                    temperature: -1.0,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "temperature",
        ),
        (
            Request {
                params: Params {
                    max_tokens: 0,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "max_tokens",
        ),
        (
            Request {
                params: Params {
                    min_p: 1.5,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "min_p must be in 0..=1",
        ),
        (
            Request {
                params: Params {
                    presence_penalty: f32::NAN,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "presence_penalty must be in -2..=2",
        ),
        (
            Request {
                params: Params {
                    frequency_penalty: -2.5,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "frequency_penalty must be in -2..=2",
        ),
        (
            Request {
                params: Params {
                    logprobs: 21,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "at most 20",
        ),
        (
            Request {
                params: Params {
                    priority: 9,
                    ..Params::default()
                },
                ..request(Input::Text("a".into()))
            },
            "priority",
        ),
        (
            Request {
                task: Task::Tensors,
                ..request(Input::Tensors(vec![Tensor {
                    name: "x".into(),
                    shape: vec![2, 3],
                    data: TensorData::F32(vec![0.0; 5]),
                }]))
            },
            "shape holds 6 elements",
        ),
        (
            Request {
                model: String::new(),
                ..request(Input::Text("a".into()))
            },
            "model name",
        ),
    ];
    for (req, needle) in cases {
        let n = encode_into(&req, &mut buf.0).unwrap();
        let a = access_request(&buf.0[..n]).unwrap();
        let err = check_request(a, &Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(
            err.message.contains(needle),
            "{err:?} should mention {needle:?}"
        );
    }
}

#[test]
fn request_chunks_carry_a_head_that_must_agree() {
    let mut buf = Aligned([0; 4096]);
    let mut req = request(Input::Text("hi".into()));
    req.params.priority = 2;
    req.params.timeout_ms = 250;
    req.id = 99;
    let n = encode_request(&req, &mut buf.0).unwrap();
    let limits = Limits::default();
    let (head, a) = access_request_chunk(&buf.0[..n], &limits).unwrap();
    assert_eq!(
        head,
        RequestHead {
            priority: 2,
            timeout_ms: 250,
            id: 99
        }
    );
    assert_eq!(a.id, 99);
    buf.0[0] = 1;
    let err = access_request_chunk(&buf.0[..n], &limits).unwrap_err();
    assert!(err.message.contains("disagrees"), "{err}");
    buf.0[0] = 7;
    assert!(read_request_head(&buf.0[..n], &limits)
        .unwrap_err()
        .message
        .contains("priority"));
    assert!(read_request_head(&buf.0[..8], &limits).is_err());

    // The server reads the head once, when it queues the request; the archive is then checked
    // against that head, whatever the head's bytes say by the time the request runs.
    buf.0[0] = 2;
    let queued = RequestHead {
        priority: 2,
        timeout_ms: 250,
        id: 99,
    };
    assert_eq!(
        access_request_body(&buf.0[..n], &queued, &limits)
            .unwrap()
            .id,
        99
    );
    buf.0[0] = 3;
    assert!(access_request_body(&buf.0[..n], &queued, &limits).is_ok());
    for changed in [
        RequestHead {
            timeout_ms: 251,
            ..queued
        },
        RequestHead {
            priority: 1,
            ..queued
        },
        RequestHead { id: 98, ..queued },
    ] {
        let err = access_request_body(&buf.0[..n], &changed, &limits).unwrap_err();
        assert!(err.message.contains("disagrees"), "{err}");
    }
    assert!(access_request_body(&buf.0[..8], &queued, &limits).is_err());
}

#[test]
fn descriptors_round_trip() {
    let d = Descriptor::new(DescriptorKind::Final, 0xDEAD_BEEF, 1234, 99);
    assert_eq!(Descriptor::from_words(d.to_words()), Some(d));
    assert_eq!(Descriptor::from_words([0, 0]), None);
    // The length keeps its low 24 bits only; the ticket all 32.
    let wide = Descriptor::new(DescriptorKind::Request, 1, 0x0100_0001, u32::MAX);
    let back = Descriptor::from_words(wide.to_words()).unwrap();
    assert_eq!((back.len, back.ticket), (1, u32::MAX));
}
