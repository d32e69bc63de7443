//! Python arguments into the client's types, with `TypeError` / `ValueError` that name the
//! argument when they do not fit.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use shm_runtime::{GenerateOptions, Message};

/// `texts`: one `str` or a sequence of them (not empty).
pub(crate) fn texts(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = texts.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_owned()]);
    }
    if texts.is_instance_of::<pyo3::types::PyBytes>() {
        return Err(PyTypeError::new_err(
            "texts must be a str or a sequence of str, not bytes: decode it first",
        ));
    }
    let items = texts.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "texts must be a str or a sequence of str, not {}",
            type_name(texts)
        ))
    })?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "texts[{i}] must be a str, not {}",
                type_name(&item)
            ))
        })?;
        out.push(s.to_str()?.to_owned());
    }
    if out.is_empty() {
        return Err(PyValueError::new_err(
            "texts is empty: give at least one text",
        ));
    }
    Ok(out)
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The sampling arguments every generation call takes.
#[derive(Debug, Default)]
pub(crate) struct Sampling<'py> {
    pub(crate) max_tokens: Option<i64>,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_p: Option<f64>,
    pub(crate) seed: Option<u64>,
    pub(crate) stop: Option<Bound<'py, PyAny>>,
    pub(crate) timeout: Option<f64>,
}

impl Sampling<'_> {
    /// The options, or a `ValueError` naming the argument out of range.
    pub(crate) fn options(&self) -> PyResult<GenerateOptions> {
        let mut o = GenerateOptions::new();
        if let Some(n) = self.max_tokens {
            if !(1..=i64::from(u32::MAX)).contains(&n) {
                return Err(PyValueError::new_err(format!(
                    "max_tokens must be at least 1, not {n}"
                )));
            }
            o = o.max_tokens(n as u32);
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && t >= 0.0) {
                return Err(PyValueError::new_err(format!(
                    "temperature must be a finite number >= 0 (0 is greedy), not {t}"
                )));
            }
            o = o.temperature(t as f32);
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(PyValueError::new_err(format!(
                    "top_p must be in (0, 1], not {p}"
                )));
            }
            o = o.top_p(p as f32);
        }
        if let Some(s) = self.seed {
            o = o.seed(s);
        }
        if let Some(stop) = &self.stop {
            o = o.stop(stop_strings(stop)?);
        }
        if let Some(t) = self.timeout {
            o = o.timeout(timeout(t)?);
        }
        Ok(o)
    }
}

/// `stop`: one `str` or a sequence of them.
fn stop_strings(stop: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = stop.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_owned()]);
    }
    let items = stop.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "stop must be a str or a sequence of str, not {}",
            type_name(stop)
        ))
    })?;
    items
        .enumerate()
        .map(|(i, item)| {
            let item = item?;
            let s = item.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!("stop[{i}] must be a str, not {}", type_name(&item)))
            })?;
            Ok(s.to_str()?.to_owned())
        })
        .collect()
}

/// A timeout in seconds (finite, > 0).
pub(crate) fn timeout(seconds: f64) -> PyResult<Duration> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(format!(
            "timeout must be a finite number of seconds > 0, not {seconds}"
        )));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("timeout {seconds} s is too long")))
}

/// `messages`: a sequence of `{"role": ..., "content": ...}` dicts (OpenAI's shape) or
/// `(role, content)` pairs.
pub(crate) fn messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<Message>> {
    if messages.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "messages must be a sequence of {\"role\": ..., \"content\": ...} dicts, not a str (use generate() for a plain prompt)",
        ));
    }
    let items = messages.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "messages must be a sequence of {{\"role\", \"content\"}} dicts, not {}",
            type_name(messages)
        ))
    })?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        let field = |v: Option<Bound<'_, PyAny>>, name: &str| -> PyResult<String> {
            let v =
                v.ok_or_else(|| PyValueError::new_err(format!("messages[{i}] has no \"{name}\"")))?;
            v.cast::<PyString>()
                .map_err(|_| {
                    PyTypeError::new_err(format!(
                        "messages[{i}][\"{name}\"] must be a str, not {}",
                        type_name(&v)
                    ))
                })?
                .to_str()
                .map(str::to_owned)
        };
        let (role, content) = if let Ok(d) = item.cast::<PyDict>() {
            (
                field(d.get_item("role")?, "role")?,
                field(d.get_item("content")?, "content")?,
            )
        } else if let Some(t) = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2) {
            (
                field(Some(t.get_item(0)?), "role")?,
                field(Some(t.get_item(1)?), "content")?,
            )
        } else {
            return Err(PyTypeError::new_err(format!(
                "messages[{i}] must be a {{\"role\", \"content\"}} dict or a (role, content) pair, not {}",
                type_name(&item)
            )));
        };
        out.push(Message::new(role, content));
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("messages is empty"));
    }
    Ok(out)
}
