//! Workloads of the ONNX models (feature `onnx`): one short sentence embedded (MiniLM) or
//! classified (MiniLM sentiment) in-process with `ort` directly, the same through the runtime (a
//! server in a child process, a client in this one), two diagnostic paths in between (the
//! runtime's backend called in this process; a client that parks at once), and the requests per
//! second of several concurrent clients against a batching server, beside the rate of `ort` itself
//! on whole batches.
//!
//! The direct path does what the runtime's ONNX backend does for one text, with the same model
//! file, tokenizer, truncation and session options: tokenize, run, then mean pooling with the
//! attention mask and L2 normalisation (embeddings) or a softmax over the logits (classification).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use shm_runtime::backend::writer::Out;
use shm_runtime::protocol::{
    access_request, encode_into, ArchivedBody, Input, Params, Request, Task,
};
use shm_runtime::ring::WaitStrategy;
use shm_runtime::{Client, ClientOptions, ModelConfig, ServerConfig};
use tokenizers::Tokenizer;

use crate::child::{online_cpus, ChildProcess};

/// The sentence every measurement sends.
pub const SENTENCE: &str =
    "I loved this movie: the acting was wonderful and the story kept me hooked.";

/// Pause before each block of requests in [`compare`], longer than ONNX Runtime's pool threads spin
/// after their last work.
const SETTLE: Duration = Duration::from_millis(40);

/// Tokens per text the backend keeps by default (its `max_length` option).
const MAX_LENGTH: usize = 256;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// all-MiniLM-L6-v2 (int8), mean-pooled and L2-normalised sentence embeddings.
    Embed,
    /// MiniLM sentiment classifier, output `logits`.
    Classify,
}

impl Kind {
    /// The model's folder in the cache's `models` directory.
    fn dir(self) -> &'static str {
        match self {
            Kind::Embed => "minilm",
            Kind::Classify => "minilm-sentiment",
        }
    }

    /// The name the server gives the model.
    pub fn model_name(self) -> &'static str {
        match self {
            Kind::Embed => "minilm",
            Kind::Classify => "sentiment",
        }
    }

    fn task(self) -> Task {
        match self {
            Kind::Embed => Task::Embed,
            Kind::Classify => Task::Classify,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Embed => "embed",
            Kind::Classify => "classify",
        }
    }

    /// The model's output to read.
    fn output(self) -> &'static str {
        match self {
            Kind::Embed => "last_hidden_state",
            Kind::Classify => "logits",
        }
    }
}

/// The model file of `kind` in the project's cache (`scripts/setup.sh` puts it there).
pub fn model_path(kind: Kind) -> PathBuf {
    shm_runtime::config::cache_dir()
        .join("models")
        .join(kind.dir())
        .join("model.onnx")
}

/// Checks that ONNX Runtime and both models (with their tokenizers) are present, loading ONNX
/// Runtime into this process (one environment per process).
///
/// # Errors
///
/// A reason that says what is missing and to run scripts/setup.sh.
pub fn check() -> Result<(), String> {
    shm_runtime::backend::onnx::environment().map_err(|e| format!("ONNX Runtime: {e}"))?;
    for kind in [Kind::Embed, Kind::Classify] {
        let model = model_path(kind);
        let dir = model.parent().unwrap_or(&model);
        let mut need = vec![model.clone(), dir.join("tokenizer.json")];
        if kind == Kind::Classify {
            need.push(dir.join("labels.txt"));
        }
        if let Some(missing) = need.iter().find(|p| !p.is_file()) {
            return Err(format!(
                "{} is missing: run scripts/setup.sh to fetch and build the models",
                missing.display()
            ));
        }
    }
    Ok(())
}

/// The runtime's model configuration for `kind`: the onnx backend with its defaults (batching on:
/// max_batch 8, max_delay_us 500), or `max_batch` when given.
pub fn model_config(kind: Kind, max_batch: Option<i64>) -> ModelConfig {
    let mut m = ModelConfig::new(kind.model_name(), "onnx");
    m.path = Some(model_path(kind));
    m.task = Some(kind.arg().to_owned());
    m.options.insert("output".into(), kind.output().into());
    if let Some(b) = max_batch {
        m.options.insert("max_batch".into(), b.into());
    }
    m
}

/// The model run in this process with `ort`, as the runtime's backend runs it.
pub struct Direct {
    kind: Kind,
    session: Session,
    tokenizer: Tokenizer,
    has_mask: bool,
    has_types: bool,
    pad_id: i64,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Loads `kind` with the backend's default session options (graph optimisation `All`, ONNX
    /// ONNX Runtime's default thread pools, as the backend) and its tokenizer settings (truncation at 256 tokens, no
    /// padding).
    ///
    /// # Errors
    ///
    /// When ONNX Runtime, the model or its tokenizer cannot be loaded.
    pub fn load(kind: Kind) -> Result<Direct> {
        let env = shm_runtime::backend::onnx::environment().map_err(anyhow::Error::msg)?;
        let path = model_path(kind);
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_file(&path)
            .with_context(|| format!("loading {}", path.display()))?;
        let tok_path = path.with_file_name("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("reading {}: {e}", tok_path.display()))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_LENGTH,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").map_or(0, i64::from);
        let has = |n: &str| session.inputs().iter().any(|i| i.name() == n);
        let (has_mask, has_types) = (has("attention_mask"), has("token_type_ids"));
        if !has("input_ids") {
            bail!("{} has no input_ids input", path.display());
        }
        Ok(Direct {
            kind,
            session,
            tokenizer,
            has_mask,
            has_types,
            pad_id,
            ids: Vec::new(),
            mask: Vec::new(),
            types: Vec::new(),
        })
    }

    /// Embeds (the L2-normalised mean of the token states) or classifies (softmax of the logits,
    /// in logit order) `text`.
    ///
    /// # Errors
    ///
    /// When tokenizing or the run fails, or the output has an unexpected shape.
    pub fn run(&mut self, text: &str) -> Result<Vec<f32>> {
        self.run_batch(&[text])?
            .pop()
            .ok_or_else(|| anyhow!("no answer"))
    }

    /// [`run`](Self::run) for several texts in one ONNX Runtime call, as the backend runs a batch:
    /// each text tokenized on its own, rows padded to the longest with the attention mask.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run).
    pub fn run_batch(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| anyhow!("tokenizing: {e}"))?;
            rows.push(enc.get_ids().to_vec());
        }
        let b = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(1);
        self.ids.clear();
        self.mask.clear();
        for row in &rows {
            self.ids.extend(row.iter().map(|&t| i64::from(t)));
            self.ids
                .extend(std::iter::repeat_n(self.pad_id, seq - row.len()));
            self.mask.extend(std::iter::repeat_n(1, row.len()));
            self.mask.extend(std::iter::repeat_n(0, seq - row.len()));
        }
        self.types.clear();
        self.types.resize(b * seq, 0);
        let shape = [b as i64, seq as i64];
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(3);
        inputs.push((
            "input_ids",
            TensorRef::from_array_view((shape, &self.ids[..]))?.into(),
        ));
        if self.has_mask {
            inputs.push((
                "attention_mask",
                TensorRef::from_array_view((shape, &self.mask[..]))?.into(),
            ));
        }
        if self.has_types {
            inputs.push((
                "token_type_ids",
                TensorRef::from_array_view((shape, &self.types[..]))?.into(),
            ));
        }
        let kind = self.kind;
        let outputs = self.session.run(inputs)?;
        let value = outputs
            .get(kind.output())
            .ok_or_else(|| anyhow!("the model did not produce {}", kind.output()))?;
        let (oshape, data) = value.try_extract_tensor::<f32>()?;
        let mut answers = Vec::with_capacity(b);
        for row in 0..b {
            answers.push(match kind {
                Kind::Embed => {
                    let &[_, s, h] = &oshape[..] else {
                        bail!("output shape {oshape:?}, want [batch, seq, hidden]");
                    };
                    let (s, h) = (s as usize, h as usize);
                    let mask = &self.mask[row * seq..(row + 1) * seq];
                    let mut v = vec![0.0f32; h];
                    let mut kept = 0.0f32;
                    for t in 0..s.min(seq) {
                        if mask[t] != 0 {
                            kept += 1.0;
                            let st = &data[(row * s + t) * h..(row * s + t + 1) * h];
                            v.iter_mut().zip(st).for_each(|(a, b)| *a += b);
                        }
                    }
                    let kept = kept.max(1.0);
                    v.iter_mut().for_each(|x| *x /= kept);
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= n);
                    v
                }
                Kind::Classify => {
                    let &[_, classes] = &oshape[..] else {
                        bail!("output shape {oshape:?}, want [batch, classes]");
                    };
                    let classes = classes as usize;
                    let logits = &data[row * classes..(row + 1) * classes];
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
                    logits.iter().map(|l| (l - max).exp() / sum).collect()
                }
            });
        }
        Ok(answers)
    }
}

/// An ONNX server in a child process serving one model.
#[derive(Debug)]
pub struct OnnxServer {
    child: ChildProcess,
    /// Its service name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    kind: Kind,
}

impl OnnxServer {
    /// Starts a server of `kind` (batching as [`model_config`] says for `max_batch`), its worker
    /// pinned to the `pin`-th online CPU when given, and waits until it answers.
    ///
    /// # Errors
    ///
    /// When it fails to load its model or does not come up within 60 s.
    pub fn start(kind: Kind, max_batch: Option<i64>, pin: Option<usize>) -> Result<OnnxServer> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "bench-onnx-{}-{}-{}",
            kind.arg(),
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let arg = format!(
            "{name},{},{},{}",
            kind.arg(),
            max_batch.unwrap_or(0),
            pin.map_or("none".to_owned(), |p| p.to_string())
        );
        let mut child = ChildProcess::spawn("onnx-server", &arg)?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&name) {
                Ok(c) => {
                    let pid = c.server_pid().ok_or_else(|| anyhow!("no server pid"))?;
                    return Ok(OnnxServer {
                        child,
                        name,
                        pid,
                        kind,
                    });
                }
                Err(e) => {
                    if let Some(status) = child.exit_status() {
                        bail!("the onnx server exited ({status}) before it answered");
                    }
                    if Instant::now() >= end {
                        bail!("the onnx server did not come up: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The request every measurement sends to it.
    pub fn request(&self) -> Request {
        Request {
            id: 0,
            model: self.kind.model_name().into(),
            task: self.kind.task(),
            input: Input::Text(SENTENCE.into()),
            params: Params::default(),
        }
    }

    /// The answer to one request: the embedding, or the scores in label order as the backend
    /// sorts them (highest first) with their labels.
    ///
    /// # Errors
    ///
    /// When the request fails.
    pub fn answer(&self, client: &Client) -> Result<(Vec<f32>, Vec<String>)> {
        let view = client.infer(&self.request())?;
        match &view.response()?.body {
            ArchivedBody::Embedding(v) => Ok((v.iter().map(|x| x.to_native()).collect(), vec![])),
            ArchivedBody::Classification(s) => Ok((
                s.iter().map(|s| s.score.to_native()).collect(),
                s.iter().map(|s| s.label.as_str().to_owned()).collect(),
            )),
            ArchivedBody::Error(e) => bail!("{:?}: {}", e.code, e.message.as_str()),
            _ => bail!("unexpected answer"),
        }
    }

    /// Stops it.
    ///
    /// # Errors
    ///
    /// When it did not exit cleanly.
    pub fn stop(self) -> Result<()> {
        // SAFETY: signals our own child; no memory involved.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        self.child.join()
    }
}

fn serve(name: &str, kind: Kind, max_batch: Option<i64>, pin: Option<usize>) -> Result<()> {
    let mut cfg = ServerConfig::new(name, vec![model_config(kind, max_batch)]);
    if let Some(p) = pin {
        let cpus = online_cpus();
        cfg.cores = vec![cpus[p % cpus.len()]];
    }
    crate::child::serve_until_sigterm(cfg)
}

/// The paths [`compare`] measures, in the order of [`Compared::rounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`Direct::run`] in this process.
    Direct,
    /// The runtime's own ONNX backend loaded in this process, called with an archived request and
    /// writing into a buffer: the backend's work without the runtime around it.
    Backend,
    /// Through the runtime: a server in a child process, a client here with default options.
    Runtime,
    /// Through the runtime, the client parking at once when it waits (no 50 us spin).
    RuntimeParkingClient,
}

impl Path {
    /// Every path, in the order of [`Compared::rounds`].
    pub const ALL: [Path; 4] = [
        Path::Direct,
        Path::Backend,
        Path::Runtime,
        Path::RuntimeParkingClient,
    ];
}

/// Latencies of one model on each [`Path`], measured side by side.
#[derive(Debug, Clone, Default)]
pub struct Compared {
    /// Per round, per path (in [`Path::ALL`] order): p50 and p95, in microseconds.
    pub rounds: Vec<[[f64; 2]; 4]>,
    /// Largest difference between a value of the direct answer and of the runtime's.
    pub max_diff: f32,
    /// Tokens of the sentence (with the special tokens).
    pub tokens: usize,
    /// CPU time of the client's thread while it waits for the runtime's answers, percent of the
    /// wall time, for the default client and the parking one (`None` when /proc cannot tell).
    pub client_cpu_pct: [Option<f64>; 2],
}

impl Compared {
    /// Median over the rounds of `path`'s p50 (`p95` false) or p95.
    pub fn median(&self, path: Path, p95: bool) -> f64 {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r[path as usize][usize::from(p95)])
            .collect();
        crate::stats::median(&mut v)
    }

    /// Median over the rounds of `path`'s p50 / the direct p50.
    pub fn ratio(&self, path: Path) -> f64 {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r[path as usize][0] / r[Path::Direct as usize][0])
            .collect();
        crate::stats::median(&mut v)
    }
}

/// A run context that never stops the backend (for calling it outside a server).
struct NoStop;

impl shm_runtime::backend::RunContext for NoStop {
    fn should_stop(&mut self) -> Option<shm_runtime::backend::Stop> {
        None
    }
    fn emit(
        &mut self,
        _chunk: shm_runtime::protocol::StreamChunk,
    ) -> Result<(), shm_runtime::backend::Stop> {
        Ok(())
    }
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }
}

/// 64-byte aligned room for an archived request or answer.
#[repr(C, align(64))]
struct Buf([u8; 64 << 10]);

/// Measures `kind` on every [`Path`] (server worker and clients unpinned), one request at a time:
/// `rounds` rounds of `warm` unrecorded requests on each path, then `n` recorded on each path in
/// blocks of `block`, the paths taking turns (so all see the same phases of this machine's speed).
/// Each block starts after a pause of 40 ms and one unrecorded request, so that no path is measured
/// while another's ONNX Runtime threads still spin. First checks that direct and runtime give the
/// same answer.
///
/// # Errors
///
/// When loading, starting the server or a request fails, or the answers differ.
pub fn compare(kind: Kind, rounds: usize, warm: usize, n: usize, block: usize) -> Result<Compared> {
    use shm_runtime::backend::Backend as _;
    let mut direct = Direct::load(kind)?;
    let backend = shm_runtime::backend::onnx::Onnx::load(&model_config(kind, None))
        .map_err(|e| anyhow!("loading the backend in this process: {e}"))?;
    let server = OnnxServer::start(kind, None, None)?;
    let client = Client::connect(&server.name)?;
    // Its own server: a batching worker waits up to max_delay for more requests while another
    // client of the lane sent one in the last 100 ms, which would delay the first requests of a
    // block that follows the other client's.
    let parking_server = OnnxServer::start(kind, None, None)?;
    let parking = Client::connect_with(
        &parking_server.name,
        ClientOptions {
            wait: WaitStrategy::SpinThenPark {
                spin: Duration::ZERO,
            },
            ..ClientOptions::default()
        },
    )?;
    let req = server.request();
    let mut req_buf = Box::new(Buf([0; 64 << 10]));
    let req_len = encode_into(&req, &mut req_buf.0)?;
    let mut out_buf = Box::new(Buf([0; 64 << 10]));
    let mut c = Compared {
        max_diff: same_answers(kind, &mut direct, &server, &client)?,
        tokens: direct
            .tokenizer
            .encode(SENTENCE, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .len(),
        ..Compared::default()
    };
    let mut one = |path: Path| -> Result<f64> {
        let t = Instant::now();
        match path {
            Path::Direct => {
                std::hint::black_box(direct.run(std::hint::black_box(SENTENCE))?);
            }
            Path::Backend => {
                let r = access_request(&req_buf.0[..req_len]).map_err(anyhow::Error::msg)?;
                let mut out = Out::in_buffer(&mut out_buf.0, 1);
                backend
                    .run(r, &mut NoStop, &mut out)
                    .map_err(|e| anyhow!("backend: {e}"))?;
                std::hint::black_box(out.written());
            }
            Path::Runtime | Path::RuntimeParkingClient => {
                let who = if path == Path::Runtime {
                    &client
                } else {
                    &parking
                };
                let v = who.infer(&req)?;
                if v.len() < 16 {
                    bail!("short answer");
                }
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1e6)
    };
    // Client CPU (ticks, wall) for the two runtime paths.
    let mut client_cpu = [(Some(0u64), Duration::ZERO); 2];
    for r in 0..rounds {
        let mut lat: [Vec<f64>; 4] = Default::default();
        for _ in 0..warm {
            for path in Path::ALL {
                one(path)?;
            }
        }
        for b in 0..n.div_ceil(block) {
            let m = block.min(n - b * block);
            for k in 0..Path::ALL.len() {
                let path = Path::ALL[(k + b + r) % Path::ALL.len()];
                // Let the previous path's ONNX Runtime pool go quiet (its thread spins for ~25 ms
                // after its last work, on the CPU every pool thread here is pinned to), then wake
                // this path with one unrecorded request.
                std::thread::sleep(SETTLE);
                one(path)?;
                let (ticks, wall) = (thread_cpu_ticks(), Instant::now());
                for _ in 0..m {
                    lat[path as usize].push(one(path)?);
                }
                if let Some(i) = (path as usize).checked_sub(Path::Runtime as usize) {
                    let (sum, w) = &mut client_cpu[i];
                    *w += wall.elapsed();
                    *sum = match (*sum, ticks, thread_cpu_ticks()) {
                        (Some(sum), Some(a), Some(b)) => Some(sum + (b - a)),
                        _ => None,
                    };
                }
            }
        }
        c.rounds
            .push(lat.map(|mut l| [quantile(&mut l, 0.5), quantile(&mut l, 0.95)]));
    }
    drop((client, parking));
    server.stop()?;
    parking_server.stop()?;
    c.client_cpu_pct =
        client_cpu.map(|(t, w)| t.map(|t| t as f64 / ticks_per_second() / w.as_secs_f64() * 100.0));
    Ok(c)
}

/// User + system CPU time of the calling thread, in clock ticks (/proc/thread-self/stat).
fn thread_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The largest difference between the direct answer and the runtime's (classification scores
/// compared label by label, in `labels.txt` order).
fn same_answers(
    kind: Kind,
    direct: &mut Direct,
    server: &OnnxServer,
    client: &Client,
) -> Result<f32> {
    let d = direct.run(SENTENCE)?;
    let (r, labels) = server.answer(client)?;
    let r = match kind {
        Kind::Embed => r,
        Kind::Classify => {
            let order = std::fs::read_to_string(model_path(kind).with_file_name("labels.txt"))?;
            order
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    labels
                        .iter()
                        .position(|x| x == l)
                        .map(|i| r[i])
                        .ok_or_else(|| anyhow!("the runtime gave no score for {l:?}"))
                })
                .collect::<Result<Vec<f32>>>()?
        }
    };
    if d.len() != r.len() {
        bail!(
            "direct answer has {} values, the runtime's {}",
            d.len(),
            r.len()
        );
    }
    let diff = d
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    if diff > 1e-3 {
        bail!("the direct and runtime answers differ by up to {diff}");
    }
    Ok(diff)
}

/// Throughput of concurrent embedding clients against a batching server and a non-batching one.
#[derive(Debug, Clone, Copy)]
pub struct Concurrent {
    /// Requests per second with the backend's default batching (max_batch 8, max_delay_us 500).
    pub batched_rps: f64,
    /// Requests per second with max_batch 1.
    pub unbatched_rps: f64,
    /// Mean size of the batching server's batches of two or more requests.
    pub mean_batch: f64,
    /// Share of the batching server's requests that ran in such batches.
    pub batched_share: f64,
    /// CPU time of the client threads during the batched windows, percent of one core (`None`
    /// when /proc cannot tell).
    pub clients_cpu_pct: Option<f64>,
    /// Texts per second of this process running `ort` directly on batches of `clients` copies of
    /// the sentence, back to back (what batching can reach on this machine).
    pub direct_batch_rps: f64,
}

/// Requests per second of `clients` concurrent embedding clients for `window`, against a server
/// with the backend's default batching and one with max_batch 1 (both unpinned), and texts per
/// second of [`Direct::run_batch`] on batches of `clients` texts for `window`, alternating over
/// `rounds` rounds; medians.
///
/// # Errors
///
/// When a server or a request fails.
pub fn concurrent(rounds: usize, clients: usize, window: Duration) -> Result<Concurrent> {
    let mut direct = Direct::load(Kind::Embed)?;
    let texts = vec![SENTENCE; clients];
    let batched = OnnxServer::start(Kind::Embed, None, None)?;
    let single = OnnxServer::start(Kind::Embed, Some(1), None)?;
    let svc = shm_runtime::service::Service::open(&batched.name).map_err(anyhow::Error::msg)?;
    let lane = svc.lane(0);
    let (mut b, mut s, mut d, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Some(Vec::new()));
    let counts = || {
        (
            lane.batches.load(Ordering::Relaxed),
            lane.batched.load(Ordering::Relaxed),
            lane.completed.load(Ordering::Relaxed),
        )
    };
    let before = counts();
    for r in 0..rounds {
        for arm in 0..3 {
            match (arm + r) % 3 {
                0 => {
                    let (rps, pct) = concurrent_rps(&batched, clients, window)?;
                    b.push(rps);
                    cpu = cpu.zip(pct).map(|(mut v, p)| {
                        v.push(p);
                        v
                    });
                }
                1 => s.push(concurrent_rps(&single, clients, window)?.0),
                _ => {
                    std::thread::sleep(SETTLE);
                    std::hint::black_box(direct.run_batch(&texts)?);
                    let t0 = Instant::now();
                    let mut done = 0;
                    while t0.elapsed() < window {
                        std::hint::black_box(direct.run_batch(&texts)?);
                        done += texts.len();
                    }
                    d.push(done as f64 / t0.elapsed().as_secs_f64());
                }
            }
        }
    }
    let after = counts();
    drop(svc);
    batched.stop()?;
    single.stop()?;
    let (batches, in_batches, done) = (
        (after.0 - before.0) as f64,
        (after.1 - before.1) as f64,
        (after.2 - before.2) as f64,
    );
    Ok(Concurrent {
        batched_rps: crate::stats::median(&mut b),
        unbatched_rps: crate::stats::median(&mut s),
        mean_batch: if batches > 0.0 {
            in_batches / batches
        } else {
            1.0
        },
        batched_share: if done > 0.0 { in_batches / done } else { 0.0 },
        clients_cpu_pct: cpu.map(|mut v| crate::stats::median(&mut v)),
        direct_batch_rps: crate::stats::median(&mut d),
    })
}

/// Requests per second of `clients` threads of this process, each with its own connection,
/// sending the request back to back for `window` (after a few unrecorded requests each), and the
/// CPU time of those threads over the window in percent of one core (`None` when /proc cannot
/// tell).
///
/// # Errors
///
/// When a connection or request fails.
fn concurrent_rps(
    server: &OnnxServer,
    clients: usize,
    window: Duration,
) -> Result<(f64, Option<f64>)> {
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let start = start.clone();
            let name = server.name.clone();
            let req = server.request();
            std::thread::spawn(move || -> Result<(u64, Instant, Option<u64>)> {
                let connected = Client::connect(&name);
                let warmed = connected.map_err(anyhow::Error::from).and_then(|c| {
                    for _ in 0..3 {
                        drop(c.infer(&req)?);
                    }
                    Ok(c)
                });
                start.wait();
                let client = warmed?;
                let (t0, ticks) = (Instant::now(), thread_cpu_ticks());
                let mut done = 0u64;
                while t0.elapsed() < window {
                    drop(client.infer(&req)?);
                    done += 1;
                }
                let ticks = ticks.zip(thread_cpu_ticks()).map(|(a, b)| b - a);
                Ok((done, Instant::now(), ticks))
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut total = 0;
    let mut last = t0;
    let mut cpu_ticks = Some(0);
    for t in threads {
        let (done, end, ticks) = t
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
        total += done;
        last = last.max(end);
        cpu_ticks = cpu_ticks.zip(ticks).map(|(a, b)| a + b);
    }
    let secs = (last - t0).as_secs_f64();
    Ok((
        total as f64 / secs,
        cpu_ticks.map(|t| t as f64 / ticks_per_second() / secs * 100.0),
    ))
}

/// Quantile `q` (0..=1) of `samples` (sorted in place), nearest rank.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    assert!(!samples.is_empty(), "quantile of nothing");
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Runs the ONNX child `role`; `Ok(false)` when the role is not one of this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    match role {
        "onnx-server" => {
            let parts: Vec<&str> = arg.split(',').collect();
            let [name, kind, max_batch, pin] = parts[..] else {
                bail!("onnx-server wants NAME,KIND,MAX_BATCH,PIN, got {arg:?}");
            };
            let kind = match kind {
                "embed" => Kind::Embed,
                "classify" => Kind::Classify,
                other => bail!("unknown onnx model kind {other:?}"),
            };
            let max_batch = match max_batch.parse::<i64>()? {
                0 => None,
                b => Some(b),
            };
            let pin = match pin {
                "none" => None,
                p => Some(p.parse::<usize>()?),
            };
            serve(name, kind, max_batch, pin)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
