//! Target `request`: arbitrary bytes as the content of a request chunk.
//!
//! What the server does with a request chunk, in order: `accept` reads the plain head
//! ([`read_request_head`]) to queue the job; when the job runs, `validate` checks the whole chunk
//! ([`access_request_chunk`]: head, bytecheck of the archive, [`check_request`] with the limits,
//! head and archive agree) and the lane's model and task; then the backend reads the archived
//! request. Here the built-in echo backend runs on every request that passes, writing its answer
//! in place, and the answer must be a valid archived response (what the client checks).
//!
//! The archive alone (without a head) also goes through [`access_request`] and [`check_request`],
//! so inputs without a valid head still reach bytecheck.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use shm_runtime::backend::echo::Echo;
use shm_runtime::backend::writer::Out;
use shm_runtime::backend::{Backend, RunContext, Stop};
use shm_runtime::protocol::{
    access_request, access_request_body, access_request_chunk, access_response, check_request,
    f32_native, i32_native, i64_native, read_request_head, tokens_native, u64_native,
    ArchivedInput, ArchivedRequest, ArchivedTensorData, ErrorCode, Limits, StreamChunk,
    REQUEST_HEAD,
};

use crate::{aligned, bytes_mut, Line};

/// Largest request chunk tried (longer inputs are cut): a 64 KiB chunk of the standard pool.
pub const MAX_REQUEST: usize = 64 << 10;
/// Room for the echo backend's answer (1 MiB, the standard pool's largest chunk).
const ANSWER_ROOM: usize = 1 << 20;

thread_local! {
    static BUFFERS: RefCell<(Vec<Line>, Vec<Line>)> =
        RefCell::new((aligned(MAX_REQUEST), aligned(ANSWER_ROOM)));
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let data = &data[..data.len().min(MAX_REQUEST)];
    BUFFERS.with(|b| {
        let (chunk, answer) = &mut *b.borrow_mut();
        let chunk = bytes_mut(chunk);
        chunk[..data.len()].copy_from_slice(data);
        check_chunk(&chunk[..data.len()], bytes_mut(answer));
    });
}

/// What the server does with the `bytes` of a request chunk (64-byte aligned, as in the pool).
pub fn check_chunk(bytes: &[u8], answer: &mut [u8]) {
    let limits = Limits::default();
    // accept(): only the head, before queueing.
    let head = read_request_head(bytes, &limits);
    // The archive behind the head, whatever the head says.
    let archive_ok = match bytes.get(REQUEST_HEAD..).map(access_request) {
        Some(Ok(req)) => {
            let checked = check_request(req, &limits);
            if checked.is_ok() {
                walk(req);
            }
            checked.is_ok()
        }
        _ => false,
    };
    // validate(): the whole chunk.
    match access_request_chunk(bytes, &limits) {
        Ok((h, req)) => {
            assert_eq!(
                access_request_body(bytes, &h, &limits).map(|r| r.id.to_native()),
                Ok(h.id),
                "the archive checked against the head read at intake differs"
            );
            assert!(archive_ok, "the chunk passed but its archive alone did not");
            assert_eq!(head, Ok(h), "the head read twice differs");
            assert_eq!(req.id.to_native(), h.id);
            // The lane's checks: the model name and the task are read.
            let _ = req.model.as_str().len();
            let _ = req.task.to_native();
            run_echo(req, answer);
        }
        Err(refusal) => {
            assert_eq!(refusal.code, ErrorCode::InvalidRequest);
            assert!(!refusal.message.is_empty());
        }
    }
}

/// Reads every field a backend may read, the way the backends read them.
fn walk(req: &ArchivedRequest) {
    let mut sum = 0usize;
    sum += req.model.as_str().len();
    match &req.input {
        ArchivedInput::Text(t) => sum += t.as_str().chars().count(),
        ArchivedInput::Texts(ts) => {
            for t in ts.iter() {
                sum += t.as_str().chars().count();
            }
        }
        ArchivedInput::Tokens(t) => {
            sum += tokens_native(t).iter().map(|&t| t as usize).sum::<usize>() & 1
        }
        ArchivedInput::Chat(m) => {
            for m in m.iter() {
                sum += m.role.as_str().len() + m.content.as_str().chars().count();
            }
        }
        ArchivedInput::Tensors(ts) => {
            for t in ts.iter() {
                sum += t.name.as_str().len() + u64_native(&t.shape).len() + t.data.len();
                sum += match &t.data {
                    ArchivedTensorData::F32(v) => {
                        f32_native(v).iter().filter(|x| x.is_nan()).count()
                    }
                    ArchivedTensorData::I64(v) => i64_native(v).len(),
                    ArchivedTensorData::I32(v) => i32_native(v).len(),
                    ArchivedTensorData::U8(v) => v.as_slice().len(),
                };
            }
        }
    }
    let p = &req.params;
    for s in p.stop.iter() {
        sum += s.as_str().len();
    }
    sum += p.max_tokens.to_native() as usize + p.top_k.to_native() as usize;
    sum += usize::from(p.stream) + usize::from(p.priority);
    std::hint::black_box(sum);
}

/// A run context that never stops and drops stream chunks.
struct Quiet {
    deadline: Instant,
    chunks: usize,
}

impl RunContext for Quiet {
    fn should_stop(&mut self) -> Option<Stop> {
        None
    }
    fn emit(&mut self, chunk: StreamChunk) -> Result<(), Stop> {
        self.chunks += 1;
        std::hint::black_box(chunk);
        Ok(())
    }
    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Runs the echo backend on a valid request; a written answer must be a valid response.
fn run_echo(req: &ArchivedRequest, answer: &mut [u8]) {
    let mut ctx = Quiet {
        deadline: Instant::now() + Duration::from_secs(60),
        chunks: 0,
    };
    let mut out = Out::in_buffer(answer, req.id.to_native());
    let result = Echo.run(req, &mut ctx, &mut out);
    if result.is_ok() {
        let bytes = out.bytes().expect("an Ok run writes an answer");
        let resp = access_response(bytes).expect("the echo answer is a valid response");
        assert_eq!(resp.id, req.id);
    }
}
