//! The answers other than embeddings, as plain Python objects: classifications, generations and
//! their usage, and the server's health.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shm_runtime::FinishReason;

/// A text's classification: the best label, its score, and every label's score.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug, Clone)]
pub(crate) struct Classification {
    /// The best label.
    #[pyo3(get)]
    label: String,
    /// Its score.
    #[pyo3(get)]
    score: f32,
    all: Vec<(String, f32)>,
}

#[pymethods]
impl Classification {
    /// Every label's score, best first (a dict keeps that order).
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (label, score) in &self.all {
            d.set_item(label, score)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Classification(label={:?}, score={:.4})",
            self.label, self.score
        )
    }
}

impl From<shm_runtime::Classification> for Classification {
    fn from(c: shm_runtime::Classification) -> Self {
        Classification {
            label: c.label,
            score: c.score,
            all: c.scores,
        }
    }
}

/// Tokens a generation read and wrote.
#[pyclass(module = "shm_runtime", frozen, get_all)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// Tokens of the prompt (after the chat template, for `chat`).
    prompt_tokens: u32,
    /// Tokens generated.
    completion_tokens: u32,
}

#[pymethods]
impl Usage {
    /// `prompt_tokens + completion_tokens`.
    #[getter]
    fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }

    fn __repr__(&self) -> String {
        format!(
            "Usage(prompt_tokens={}, completion_tokens={})",
            self.prompt_tokens, self.completion_tokens
        )
    }
}

/// A finished generation.
#[pyclass(module = "shm_runtime", frozen, get_all)]
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    /// The generated text.
    text: String,
    /// The generated token ids.
    tokens: Vec<u32>,
    /// Why it ended: `"stop"` (end of text or a stop string), `"length"` (max_tokens),
    /// `"cancelled"` or `"timeout"`.
    finish_reason: &'static str,
    /// Tokens read and written.
    usage: Usage,
    /// Seconds from the request's arrival at the server to its first token.
    time_to_first_token: f64,
    /// Seconds the server spent on it.
    total_time: f64,
}

#[pymethods]
impl Generation {
    fn __repr__(&self) -> String {
        format!(
            "Generation(text={:?}, finish_reason={:?}, tokens={})",
            self.text,
            self.finish_reason,
            self.tokens.len()
        )
    }
}

/// The name Python sees for a finish reason (OpenAI's words where they exist).
fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Timeout => "timeout",
    }
}

impl From<shm_runtime::Generation> for Generation {
    fn from(g: shm_runtime::Generation) -> Self {
        Generation {
            text: g.text,
            tokens: g.tokens,
            finish_reason: finish_name(g.finish_reason),
            usage: Usage {
                prompt_tokens: g.usage.prompt_tokens,
                completion_tokens: g.usage.completion_tokens,
            },
            time_to_first_token: g.time_to_first_token.as_secs_f64(),
            total_time: g.total_time.as_secs_f64(),
        }
    }
}

/// One model's readiness.
#[pyclass(module = "shm_runtime", frozen, get_all)]
#[derive(Debug, Clone)]
pub(crate) struct ModelHealth {
    /// The model's name.
    name: String,
    /// `"warming"`, `"ready"` or `"failed"`.
    state: String,
    /// Seconds its warm-up inference took.
    ping: f64,
}

#[pymethods]
impl ModelHealth {
    fn __repr__(&self) -> String {
        format!("ModelHealth(name={:?}, state={:?})", self.name, self.state)
    }
}

/// The server's own answer about itself (no model involved).
#[pyclass(module = "shm_runtime", frozen, get_all)]
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// The server's process id.
    server_pid: u32,
    /// Seconds since it started.
    uptime: f64,
    /// Its version.
    version: String,
    /// Each model's state.
    models: Vec<ModelHealth>,
    /// Whether every model is ready.
    ready: bool,
}

#[pymethods]
impl Health {
    fn __repr__(&self) -> String {
        format!(
            "Health(server_pid={}, ready={}, models={})",
            self.server_pid,
            if self.ready { "True" } else { "False" },
            self.models.len()
        )
    }
}

impl From<shm_runtime::Health> for Health {
    fn from(h: shm_runtime::Health) -> Self {
        Health {
            ready: h.is_ready(),
            server_pid: h.server_pid,
            uptime: h.uptime.as_secs_f64(),
            version: h.version,
            models: h
                .models
                .into_iter()
                .map(|m| ModelHealth {
                    name: m.name,
                    state: m.state.to_string(),
                    ping: m.ping.as_secs_f64(),
                })
                .collect(),
        }
    }
}
