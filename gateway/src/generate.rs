//! `POST /v1/chat/completions` and `POST /v1/completions`: plain answers and server-sent event
//! streams, onto the runtime's generation calls.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use serde_json::{json, Value};
use shm_runtime::{AsyncTextStream, GenerateOptions, Generation, Message, StreamEvent};

use crate::api::{
    chat_logprobs, finish_reason, ChatRequest, CompletionRequest, Content, OneOrMany, Sampling,
    Usage,
};
use crate::error::ApiError;
use crate::runtime::Lease;
use crate::{ApiJson, Gateway, RequestId};

/// Whole seconds since the epoch (the API's `created`).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for a request that gives none: the API samples afresh each time.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (nanos ^ n ^ u64::from(std::process::id())).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The runtime's options for the API's sampling fields.
fn options(
    s: &Sampling,
    default_max_tokens: u32,
    logprobs: u8,
) -> Result<GenerateOptions, ApiError> {
    if let Some(n) = s.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n = {n} is not supported: this server returns one choice per request (n = 1)"),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature {temperature} is outside 0..=2"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p {top_p} is outside (0, 1]"),
        ));
    }
    let stop = s.stop.clone().map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("{} stop sequences given; at most 4", stop.len()),
        ));
    }
    let mut o = GenerateOptions::new()
        .max_tokens(
            s.max_completion_tokens
                .or(s.max_tokens)
                .unwrap_or(default_max_tokens),
        )
        .temperature(temperature)
        .top_p(top_p)
        .seed(s.seed.map_or_else(fresh_seed, |s| s as u64))
        .stop(stop)
        .logprobs(logprobs);
    if let Some(p) = s.presence_penalty {
        o = o.presence_penalty(p);
    }
    if let Some(p) = s.frequency_penalty {
        o = o.frequency_penalty(p);
    }
    if let Some(k) = s.top_k {
        o = o.top_k(k);
    }
    if let Some(p) = s.min_p {
        o = o.min_p(p);
    }
    if let Some(p) = s.repetition_penalty {
        o = o.repetition_penalty(p);
    }
    Ok(o)
}

/// The messages' text (string content, or the text parts of a list).
fn messages(req: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    req.messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    Some("messages"),
                                    format!(
                                    "content parts of type {kind:?} are not supported: only text"
                                ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message::new(m.role.clone(), content))
        })
        .collect()
}

/// The identity fields every answer of one request repeats.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
}

impl Meta {
    fn value(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(gw): State<Arc<Gateway>>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            ))
        }
        (false, None) => 0,
        (true, n) => n.unwrap_or(0).max(1),
    };
    let opts = options(&req.sampling, gw.options.default_max_tokens, logprobs)?;
    let msgs = messages(&req)?;
    let lease = gw.runtime.lease().await?;
    let meta = Meta {
        id: format!("chatcmpl-{}", rid.0),
        object: "chat.completion",
        created: now_secs(),
        model: req.model.clone(),
    };
    if req.sampling.stream {
        let stream = lease.client.chat_stream(&req.model, &msgs, &opts);
        let stream = gw.check(&lease, stream)?;
        let include_usage = req.sampling.include_usage();
        let meta = Meta {
            object: "chat.completion.chunk",
            ..meta
        };
        return Ok(sse(
            gw,
            lease,
            stream,
            Flavour::Chat,
            meta,
            include_usage,
            logprobs > 0,
        ));
    }
    let g = lease.client.chat(&req.model, &msgs, &opts).await;
    let g = gw.check(&lease, g)?;
    let lp = if logprobs > 0 {
        serde_json::to_value(chat_logprobs(&g.logprobs)).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let mut body = meta.value(json!([{
        "index": 0,
        "message": {"role": "assistant", "content": g.text, "refusal": null},
        "logprobs": lp,
        "finish_reason": finish_reason(g.finish_reason),
    }]));
    body["usage"] = json!(Usage::from(g.usage));
    Ok(axum::Json(body).into_response())
}

/// The legacy completions API's `logprobs` object.
fn completion_logprobs(lps: &[shm_runtime::TokenLogprob], offset0: usize) -> Value {
    let c = chat_logprobs(lps);
    let mut offset = offset0;
    let mut text_offset = Vec::with_capacity(c.content.len());
    for t in &c.content {
        text_offset.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": c.content.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": c.content.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": c.content.iter().map(|t| {
            t.top_logprobs.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(gw): State<Arc<Gateway>>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompts = req.prompt.clone().into_vec();
    let [prompt] = prompts.as_slice() else {
        return Err(ApiError::invalid(
            Some("prompt"),
            format!(
                "{} prompts given: this server completes one prompt per request",
                prompts.len()
            ),
        ));
    };
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
    }
    let logprobs = req.logprobs.unwrap_or(0);
    let opts = options(&req.sampling, gw.options.default_max_tokens, logprobs)?;
    let lease = gw.runtime.lease().await?;
    let meta = Meta {
        id: format!("cmpl-{}", rid.0),
        object: "text_completion",
        created: now_secs(),
        model: req.model.clone(),
    };
    if req.sampling.stream {
        let stream = lease.client.stream(&req.model, prompt, &opts);
        let stream = gw.check(&lease, stream)?;
        let include_usage = req.sampling.include_usage();
        let flavour = Flavour::Completion {
            echo: req.echo.then(|| prompt.clone()),
        };
        return Ok(sse(
            gw,
            lease,
            stream,
            flavour,
            meta,
            include_usage,
            logprobs > 0,
        ));
    }
    let g: Generation = gw.check(
        &lease,
        lease.client.generate(&req.model, prompt, &opts).await,
    )?;
    let prefix = if req.echo { prompt.as_str() } else { "" };
    let lp = if logprobs > 0 {
        completion_logprobs(&g.logprobs, prefix.len())
    } else {
        Value::Null
    };
    let mut body = meta.value(json!([{
        "index": 0,
        "text": format!("{prefix}{}", g.text),
        "logprobs": lp,
        "finish_reason": finish_reason(g.finish_reason),
    }]));
    body["usage"] = json!(Usage::from(g.usage));
    Ok(axum::Json(body).into_response())
}

/// Which API a stream speaks.
#[derive(Debug, Clone)]
enum Flavour {
    Chat,
    Completion { echo: Option<String> },
}

/// A stream's state between events.
struct SseState {
    gw: Arc<Gateway>,
    lease: Lease,
    inner: Option<AsyncTextStream>,
    queue: VecDeque<Event>,
    flavour: Flavour,
    meta: Meta,
    include_usage: bool,
    logprobs: bool,
    started: bool,
    text_len: usize,
}

impl SseState {
    fn chunk(&self, choices: Value) -> Event {
        let mut v = self.meta.value(choices);
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    /// The choice of one delta (`text` new, or the end with `finish`).
    fn choice(&self, text: Option<&str>, lp: Value, finish: Option<&str>) -> Value {
        match &self.flavour {
            Flavour::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!([{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}])
            }
            Flavour::Completion { .. } => {
                json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish}])
            }
        }
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let first = match &self.flavour {
            Flavour::Chat => json!([{
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            }]),
            Flavour::Completion { echo: Some(p) } => {
                self.text_len = p.len();
                self.choice(Some(p), Value::Null, None)
            }
            Flavour::Completion { echo: None } => return,
        };
        let ev = self.chunk(first);
        self.queue.push_back(ev);
    }

    fn logprobs_value(&self, lps: &[shm_runtime::TokenLogprob]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.flavour {
            Flavour::Chat => serde_json::to_value(chat_logprobs(lps)).unwrap_or(Value::Null),
            Flavour::Completion { .. } => completion_logprobs(lps, self.text_len),
        }
    }

    fn on_event(&mut self, ev: StreamEvent) {
        self.start();
        match ev {
            StreamEvent::Delta {
                text,
                tokens,
                logprobs,
            } => {
                let carries_logprobs = self.logprobs && !tokens.is_empty();
                if text.is_empty() && !carries_logprobs {
                    return;
                }
                let lp = self.logprobs_value(&logprobs);
                self.text_len += text.len();
                let ev = self.chunk(self.choice(Some(&text), lp, None));
                self.queue.push_back(ev);
            }
            StreamEvent::Done(g) => {
                let end = self.chunk(self.choice(
                    None,
                    Value::Null,
                    Some(finish_reason(g.finish_reason)),
                ));
                self.queue.push_back(end);
                if self.include_usage {
                    let mut v = self.meta.value(json!([]));
                    v["usage"] = json!(Usage::from(g.usage));
                    self.queue.push_back(Event::default().data(v.to_string()));
                }
                self.queue.push_back(Event::default().data("[DONE]"));
                self.inner = None;
            }
        }
    }

    fn on_error(&mut self, e: shm_runtime::Error) {
        self.gw.runtime.observe(&self.lease.connections, &e);
        let api = ApiError::from(e);
        tracing::warn!(request = %self.meta.id, error = %api.message, "stream failed");
        self.queue
            .push_back(Event::default().data(api.body().to_string()));
        self.inner = None;
    }
}

/// The answer of a streamed request: server-sent events, each one chunk, then `data: [DONE]`.
/// Dropping the body (the client left) drops the runtime stream, which cancels the request.
fn sse(
    gw: Arc<Gateway>,
    lease: Lease,
    inner: AsyncTextStream,
    flavour: Flavour,
    meta: Meta,
    include_usage: bool,
    logprobs: bool,
) -> Response {
    let keep_alive = gw.options.keep_alive;
    let state = SseState {
        gw,
        lease,
        inner: Some(inner),
        queue: VecDeque::new(),
        flavour,
        meta,
        include_usage,
        logprobs,
        started: false,
        text_len: 0,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            let next = s.inner.as_mut()?.next().await;
            match next {
                Some(Ok(ev)) => s.on_event(ev),
                Some(Err(e)) => s.on_error(e),
                None => s.on_error(shm_runtime::Error::Protocol(
                    "the stream ended without its final answer".into(),
                )),
            }
        }
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    resp
}
