//! The routes about the service rather than a model's answer: models, liveness, readiness,
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::Gateway;

/// How long `/health` waits for every lane of the runtime to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

fn model_value(gw: &Gateway, id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "object": "model",
        "created": gw.created(),
        "owned_by": "shm-runtime",
    })
}

impl Gateway {
    /// The `created` of the models: when this gateway started, in seconds since the epoch.
    fn created(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since_epoch.saturating_sub(self.started.elapsed()).as_secs()
    }
}

/// `GET /v1/models`.
pub(crate) async fn models(State(gw): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    let c = gw.runtime.connections()?;
    let data: Vec<_> = c.models().iter().map(|m| model_value(&gw, m)).collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{model}`.
pub(crate) async fn model(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = gw.runtime.connections()?;
    if !c.models().contains(&id) {
        return Err(shm_runtime::Error::ModelNotFound(format!(
            "the service serves no model {id:?}"
        ))
        .into());
    }
    Ok(axum::Json(model_value(&gw, &id)).into_response())
}

/// `GET /livez`: the gateway process is up (says nothing of the runtime).
pub(crate) async fn livez() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /health`: 200 `{"status":"ok"}` only when every lane of the runtime answers a ping and
/// every model is ready; else 503 with what is wrong.
pub(crate) async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let c = match gw.runtime.connections() {
        Ok(c) => c,
        Err(e) => return not_ready(&e.message, None),
    };
    let client = c.any().blocking().clone();
    let answer = tokio::task::spawn_blocking(move || client.health(HEALTH_TIMEOUT)).await;
    let h = match answer {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            gw.runtime.observe(&c, &e);
            return not_ready(&e.to_string(), None);
        }
        Err(e) => return not_ready(&format!("the health check failed: {e}"), None),
    };
    let models: serde_json::Map<String, serde_json::Value> = h
        .models
        .iter()
        .map(|m| (m.name.clone(), json!(m.state.to_string())))
        .collect();
    if h.is_ready() {
        axum::Json(json!({"status": "ok", "models": models})).into_response()
    } else {
        not_ready("not every model is ready", Some(models))
    }
}

fn not_ready(reason: &str, models: Option<serde_json::Map<String, serde_json::Value>>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "unavailable", "reason": reason, "models": models})),
    )
        .into_response()
}

/// `GET /metrics`: the runtime's metrics, read from its segment, and the gateway's own, in
/// Prometheus' text format.
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let service = gw.runtime.service().to_owned();
    let runtime = tokio::task::spawn_blocking(move || shm_runtime::status(&service))
        .await
        .ok()
        .and_then(Result::ok);
    let mut text = crate::metrics::runtime_text(gw.runtime.service(), runtime.as_ref());
    crate::metrics::set_gateway_gauges(gw.runtime.queued());
    text.push_str(&crate::metrics::gateway_text());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Any other path.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("unknown_url"),
        param: None,
        message: format!("unknown URL {}", uri.path()),
    }
}
