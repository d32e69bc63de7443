//! `POST /v1/embeddings` (all inputs in one batched runtime request) and `POST /v1/classify`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::api::{ClassifyRequest, EmbeddingRequest};
use crate::error::ApiError;
use crate::{ApiJson, Gateway};

/// The texts of an embeddings `input`: a string or a list of strings (token arrays are not
/// taken: the runtime tokenizes with the model's own tokenizer).
fn texts(input: &Value) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("input"),
            "input must be a string or a list of strings (token arrays are not supported)",
        )
    };
    let texts = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad()),
    };
    if texts.is_empty() {
        return Err(ApiError::invalid(Some("input"), "input is an empty list"));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            Some("input"),
            format!("input {i} is an empty string"),
        ));
    }
    Ok(texts)
}

/// `row` cut to its first `dims` values and scaled back to unit length.
fn shorten(row: &[f32], dims: usize) -> Vec<f32> {
    let mut v = row[..dims].to_vec();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let texts = texts(&req.input)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("encoding_format {other:?}: use \"float\" or \"base64\""),
            ))
        }
    };
    let lease = gw.runtime.lease().await?;
    let e = gw.check(&lease, lease.client.embed(&req.model, &texts).await)?;
    let dims = match req.dimensions {
        None => None,
        Some(d) if d == 0 || d as usize > e.dim() => {
            return Err(ApiError::invalid(
                Some("dimensions"),
                format!(
                    "dimensions {d}: model {} gives 1..={} dimensions",
                    req.model,
                    e.dim()
                ),
            ))
        }
        Some(d) => Some(d as usize),
    };
    let data: Vec<Value> = e
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let short;
            let row = match dims {
                Some(d) if d < row.len() => {
                    short = shorten(row, d);
                    &short[..]
                }
                _ => row,
            };
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    drop(e);
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        // The runtime does not count embedding tokens.
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
    .into_response())
}

/// `POST /v1/classify`: the labels and scores of each input, best first.
pub(crate) async fn classify(
    State(gw): State<Arc<Gateway>>,
    ApiJson(req): ApiJson<ClassifyRequest>,
) -> Result<Response, ApiError> {
    let texts = req.input.into_vec();
    if texts.is_empty() {
        return Err(ApiError::invalid(Some("input"), "input is an empty list"));
    }
    let lease = gw.runtime.lease().await?;
    let cs = gw.check(&lease, lease.client.classify(&req.model, &texts).await)?;
    let data: Vec<Value> = cs
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({
                "object": "classification",
                "index": index,
                "label": c.label,
                "score": c.score,
                "scores": c.scores.iter().map(|(l, s)| json!({"label": l, "score": s})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data, "model": req.model})).into_response())
}
