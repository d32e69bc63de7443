//! GGUF generation measured side by side: SmolLM2 decoding in this process straight through
//! llama-cpp-2, and the same model behind a server in a child process, streamed to a client here,
//! alone and with two streams at once.
//!
//! Both sides use one llama.cpp thread per sequence being decoded (the backend's default), a
//! context of the same size and greedy decoding of the same prompt; the server has two workers, so
//! two streams decode on two cores. Token rates are decode rates: tokens after the first, over the
//! time from the first token to the last, so prompt processing is in the time to first token only.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
use shm_runtime::{Client, ModelConfig, ServerConfig};

use crate::child::ChildProcess;

/// SmolLM2 in the cache (`scripts/setup.sh gguf`).
///
/// # Errors
///
/// When it is missing, with how to get it.
pub fn smollm2() -> Result<PathBuf> {
    let p = shm_runtime::config::cache_dir().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.is_file() {
        bail!("{} is missing: run scripts/setup.sh gguf", p.display());
    }
    Ok(p)
}

/// The prompt both sides continue.
pub const PROMPT: &str = "Once upon a time, in a small village by the sea, there lived";

/// Decode rate and time to first token of one generation.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens after the first, per second of decoding.
    pub tok_s: f64,
    /// Time to the first token, ms.
    pub ttft_ms: f64,
    /// Tokens generated.
    pub tokens: usize,
    /// Time to the first token as the server measured it (from admitting the request to sampling
    /// its first token), ms; `None` in-process.
    pub server_ttft_ms: Option<f64>,
    /// The decode rate as the server measured it (tokens after the first over the time from the
    /// first token to the end of the generation, from its usage figures); `None` in-process.
    pub server_tok_s: Option<f64>,
}

fn rate(start: Instant, times: &[Instant]) -> Result<Rate> {
    let (first, last) = match (times.first(), times.last()) {
        (Some(f), Some(l)) if times.len() >= 2 => (*f, *l),
        _ => bail!("fewer than 2 tokens generated"),
    };
    Ok(Rate {
        tok_s: (times.len() - 1) as f64 / (last - first).as_secs_f64(),
        ttft_ms: (first - start).as_secs_f64() * 1e3,
        tokens: times.len(),
        server_ttft_ms: None,
        server_tok_s: None,
    })
}

/// The server's context for one sequence (its `context` option); it holds `parallel` of them.
pub const CONTEXT: u32 = 2048;

/// An in-process context of `n_ctx` tokens for `seqs` sequences on `threads` llama.cpp threads,
/// decoding up to 512 tokens per step.
fn context_params(n_ctx: u32, seqs: u32, threads: i32) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_seq_max(seqs)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}

/// Greedy generation of `n` tokens in this process with `threads` llama.cpp threads and a context
/// of `n_ctx` tokens (a server's is [`CONTEXT`] x its `parallel`).
///
/// # Errors
///
/// When the model or llama.cpp fails.
pub fn direct(path: &PathBuf, n: usize, threads: i32, n_ctx: u32) -> Result<Rate> {
    let backend = shm_runtime::backend::gguf::llama().map_err(anyhow::Error::msg)?;
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    let mut ctx = model
        .new_context(backend, context_params(n_ctx, 1, threads))
        .map_err(|e| anyhow!("context: {e}"))?;
    let vocab = model.vocab();
    let start = Instant::now();
    let prompt = vocab.tokenize(PROMPT.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == prompt.len())?;
    }
    ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
    let mut sampler = LlamaSampler::greedy();
    let mut at = batch.n_tokens() - 1;
    let mut times = Vec::with_capacity(n);
    for pos in (prompt.len() as i32..).take(n) {
        let t = sampler.sample(&ctx, at);
        if vocab.is_eog(t) {
            break;
        }
        // The piece, as the server makes it for each token.
        std::hint::black_box(vocab.token_to_piece(t, false, None));
        times.push(Instant::now());
        batch.clear();
        batch.add(t, pos, &[0], true)?;
        ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
        at = 0;
    }
    rate(start, &times)
}

/// Greedy generation of `n` tokens for each of `seqs` copies of the prompt decoded together in one
/// batch per step, in this process (llama.cpp's own gain from batching sequences, the ceiling of
/// continuous batching); total tokens per second after each sequence's first token.
///
/// # Errors
///
/// When the model or llama.cpp fails.
pub fn direct_batched(path: &PathBuf, n: usize, threads: i32, seqs: usize) -> Result<f64> {
    let backend = shm_runtime::backend::gguf::llama().map_err(anyhow::Error::msg)?;
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    let mut ctx = model
        .new_context(
            backend,
            context_params(CONTEXT * seqs as u32, seqs as u32, threads),
        )
        .map_err(|e| anyhow!("context: {e}"))?;
    let vocab = model.vocab();
    let prompt = vocab.tokenize(PROMPT.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(512, seqs as i32);
    for seq in 0..seqs {
        for (i, &t) in prompt.iter().enumerate() {
            batch.add(t, i as i32, &[seq as i32], i + 1 == prompt.len())?;
        }
    }
    ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
    let mut samplers: Vec<_> = (0..seqs).map(|_| LlamaSampler::greedy()).collect();
    let mut at: Vec<i32> = (0..seqs)
        .map(|s| ((s + 1) * prompt.len()) as i32 - 1)
        .collect();
    let (mut first, mut last) = (None, Instant::now());
    let mut tokens = 0usize;
    for pos in (prompt.len() as i32..).take(n) {
        batch.clear();
        for seq in 0..seqs {
            let t = samplers[seq].sample(&ctx, at[seq]);
            std::hint::black_box(vocab.token_to_piece(t, false, None));
            batch.add(t, pos, &[seq as i32], true)?;
            at[seq] = seq as i32;
        }
        last = Instant::now();
        match first {
            None => first = Some(Instant::now()),
            Some(_) => tokens += seqs,
        }
        ctx.decode(&mut batch).map_err(|e| anyhow!("decode: {e}"))?;
    }
    let first = first.ok_or_else(|| anyhow!("no tokens generated"))?;
    Ok(tokens as f64 / (last - first).as_secs_f64())
}

/// A SmolLM2 server in a child process.
#[derive(Debug)]
pub struct GgufServer {
    child: ChildProcess,
    /// Its service name.
    pub name: String,
}

impl GgufServer {
    /// Starts one with `workers` workers, each with a context of `parallel` sequences and
    /// `threads` llama.cpp threads, and waits until it answers.
    ///
    /// # Errors
    ///
    /// When it does not come up within 60 s.
    pub fn start(parallel: usize, threads: usize, workers: usize) -> Result<GgufServer> {
        let name = format!(
            "bench-gguf-{parallel}-{threads}-{workers}-{}",
            std::process::id()
        );
        let mut child = ChildProcess::spawn(
            "gguf-server",
            &format!("{name},{parallel},{threads},{workers}"),
        )?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&name) {
                Ok(_) => return Ok(GgufServer { child, name }),
                Err(_) if Instant::now() < end && child.exit_status().is_none() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("GGUF server did not come up: {e}"),
            }
        }
    }

    /// Streams one greedy generation of up to `n` tokens; the rate as the client sees it.
    ///
    /// # Errors
    ///
    /// When the request fails.
    pub fn stream(&self, n: u32) -> Result<Rate> {
        stream_from(&self.name, n)
    }

    /// Two streams at once from two client threads: total tokens per second over the time both
    /// ran (first token of either to last token of either).
    ///
    /// # Errors
    ///
    /// When a request fails.
    pub fn two_streams(&self, n: u32) -> Result<f64> {
        // Both connect first, then start together.
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (name, start) = (self.name.clone(), start.clone());
                std::thread::spawn(move || {
                    let client = Client::connect(&name);
                    start.wait();
                    stream_times(&client?, n)
                })
            })
            .collect();
        let mut all = Vec::new();
        for r in runs {
            all.extend(r.join().map_err(|_| anyhow!("stream thread panicked"))??.0);
        }
        all.sort();
        match (all.first(), all.last()) {
            (Some(f), Some(l)) if all.len() >= 3 => {
                Ok((all.len() - 2) as f64 / (*l - *f).as_secs_f64())
            }
            _ => bail!("too few tokens"),
        }
    }

    /// Stops it.
    ///
    /// # Errors
    ///
    /// When it did not exit cleanly.
    pub fn stop(self) -> Result<()> {
        if let Some(pid) = Client::connect(&self.name)
            .ok()
            .and_then(|c| c.server_pid())
        {
            // SAFETY: signals our own child; no memory involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        self.child.join()
    }
}

fn request(n: u32) -> Request {
    Request {
        id: 0,
        model: "smollm2".into(),
        task: Task::Generate,
        input: Input::Text(PROMPT.into()),
        params: Params {
            max_tokens: n,
            temperature: 0.0,
            timeout_ms: 120_000,
            ..Params::default()
        },
    }
}

/// The usage figures of a generation's final message.
#[derive(Debug, Clone, Copy)]
struct ServerUsage {
    generated: u32,
    ttft_us: u64,
    total_us: u64,
}

/// Arrival times of a stream's tokens, and the final message's usage.
fn stream_times(client: &Client, n: u32) -> Result<(Vec<Instant>, Option<ServerUsage>)> {
    let mut times = Vec::with_capacity(n as usize);
    let mut usage = None;
    for item in client.stream_request(&request(n))? {
        let v = item?;
        if !v.is_final() {
            times.push(Instant::now());
        } else if let ArchivedBody::Generation(g) = &v.response()?.body {
            let u = &g.usage;
            usage = Some(ServerUsage {
                generated: u.generated_tokens.to_native(),
                ttft_us: u.ttft_us.to_native(),
                total_us: u.total_us.to_native(),
            });
        }
    }
    Ok((times, usage))
}

fn stream_from(name: &str, n: u32) -> Result<Rate> {
    // Connected first: the time to first token runs from the request, as the direct side's runs
    // from the prompt, not from attaching to the service.
    let client = Client::connect(name)?;
    let start = Instant::now();
    let (times, usage) = stream_times(&client, n)?;
    Ok(Rate {
        server_ttft_ms: usage.map(|u| u.ttft_us as f64 / 1e3),
        server_tok_s: usage
            .filter(|u| u.generated >= 2 && u.total_us > u.ttft_us)
            .map(|u| f64::from(u.generated - 1) / ((u.total_us - u.ttft_us) as f64 / 1e6)),
        ..rate(start, &times)?
    })
}

/// Runs the GGUF child `role`; `Ok(false)` when the role is not one of this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    if role != "gguf-server" {
        return Ok(false);
    }
    let parts: Vec<&str> = arg.split(',').collect();
    let [name, parallel, threads, workers] = parts[..] else {
        bail!("gguf-server wants NAME,PARALLEL,THREADS,WORKERS, got {arg:?}");
    };
    let mut m = ModelConfig::new("smollm2", "gguf");
    m.path = Some(smollm2()?);
    m.task = Some("generate".into());
    m.options.insert(
        "parallel".into(),
        shm_runtime::config::OptionValue::Integer(parallel.parse()?),
    );
    m.options.insert(
        "context".into(),
        shm_runtime::config::OptionValue::Integer(CONTEXT.into()),
    );
    m.options.insert(
        "threads".into(),
        shm_runtime::config::OptionValue::Integer(threads.parse()?),
    );
    m.workers = Some(workers.parse()?);
    let cfg = ServerConfig::new(name, vec![m]);
    crate::child::serve_until_sigterm(cfg)?;
    Ok(true)
}
