//! Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}`, with the
//! status code that says what to do (400 fix the request, 404 unknown model, 413 too large, 429
//! retry later, 503 the runtime is not there or not ready, 504 timed out).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shm_runtime::Error;

/// An error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: Option<&'static str>,
    pub(crate) param: Option<&'static str>,
    pub(crate) message: String,
}

impl ApiError {
    /// 400: the request is wrong; `param` names the field when one is to blame.
    pub(crate) fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param,
            message: message.into(),
        }
    }

    /// 429: the gateway's own queue is full.
    pub(crate) fn queue_full(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("rate_limit_exceeded"),
            param: None,
            message: format!(
                "the gateway's queue is full ({limit} requests waiting for the runtime): retry later"
            ),
        }
    }

    /// 503: no runtime to send to.
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable",
            code: Some("service_unavailable"),
            param: None,
            message: message.into(),
        }
    }

    /// The body of the error, as sent (also as one server-sent event when a stream fails).
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        let (status, kind, code) = match &e {
            Error::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Error::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            Error::Busy(_) | Error::ResourceExhausted(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            Error::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "timeout", Some("timeout")),
            Error::ServiceNotFound(_)
            | Error::ServerGone
            | Error::Disconnected(_)
            | Error::ShuttingDown
            | Error::VersionMismatch { .. }
            | Error::Attach(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("service_unavailable"),
            ),
            Error::Cancelled => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("cancelled"),
            ),
            Error::Backend(_) | Error::Protocol(_) | Error::UnknownTicket(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        ApiError {
            status,
            kind,
            code,
            param: None,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
