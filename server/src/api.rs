//! The wire format: the completion request as parsed and checked, the OpenAI-shaped replies,
//! and errors as HTTP statuses with a JSON body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use latchless::batch::{BatchError, SubmitError};
use latchless_showcase::serve::{Answer, Request, ServeError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::metrics::{InFlight, Outcome};

/// The body parameters `POST /v1/completions` takes; any other is refused.
const KNOWN: [&str; 6] = [
    "prompt",
    "max_tokens",
    "stream",
    "session",
    "priority",
    "model",
];

/// `max_tokens` when the request does not say (OpenAI's default).
pub(crate) const DEFAULT_MAX_TOKENS: usize = 16;

/// Sessions the server makes up for requests without one start here; a client's must be below.
pub(crate) const ANONYMOUS_SESSIONS: u64 = 1 << 63;

/// A completion request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    prompt: String,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    session: Option<u64>,
    #[serde(default)]
    priority: Option<usize>,
    #[serde(default)]
    model: Option<String>,
}

/// What a completion request is checked against.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) model_name: &'static str,
    pub(crate) max_request_tokens: usize,
    pub(crate) max_tokens_cap: usize,
    pub(crate) priority_classes: usize,
}

/// A completion request that passed every check.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) prompt: Vec<u8>,
    pub(crate) max_tokens: usize,
    pub(crate) stream: bool,
    pub(crate) session: Option<u64>,
    pub(crate) priority: Option<usize>,
}

/// Parses and checks a completion request's body.
pub(crate) fn parse(body: &[u8], limits: &Limits) -> Result<Completion, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::invalid(format!(
            "unsupported parameter{}: {}; this server takes only {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            KNOWN.join(", ")
        )));
    }
    let wire: Wire = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::invalid(format!("bad request body: {e}")))?;
    if let Some(model) = &wire.model {
        if model != limits.model_name {
            return Err(ApiError::invalid(format!(
                "model `{model}` is not served here; this server runs `{}`",
                limits.model_name
            )));
        }
    }
    let max_tokens = wire.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens must be at least 1"));
    }
    if max_tokens > limits.max_tokens_cap {
        return Err(ApiError::invalid(format!(
            "max_tokens is {max_tokens}; this server generates at most {}",
            limits.max_tokens_cap
        )));
    }
    if wire.prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty"));
    }
    let requested = wire.prompt.len().saturating_add(max_tokens);
    if requested > limits.max_request_tokens {
        return Err(ApiError::invalid(format!(
            "the prompt ({} bytes) and max_tokens ({max_tokens}) add up to {requested} tokens; \
             the model takes at most {}",
            wire.prompt.len(),
            limits.max_request_tokens
        )));
    }
    if let Some(session) = wire.session {
        if session >= ANONYMOUS_SESSIONS {
            return Err(ApiError::invalid(format!(
                "session must be below {ANONYMOUS_SESSIONS}"
            )));
        }
    }
    if let Some(priority) = wire.priority {
        if priority >= limits.priority_classes {
            return Err(ApiError::invalid(format!(
                "priority must be 0 (most urgent) to {}",
                limits.priority_classes - 1
            )));
        }
    }
    Ok(Completion {
        prompt: wire.prompt.into_bytes(),
        max_tokens,
        stream: wire.stream.unwrap_or(false),
        session: wire.session,
        priority: wire.priority,
    })
}

/// What every reply of one completion shares.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: &'static str,
    pub(crate) prompt_tokens: usize,
}

impl Meta {
    /// A whole completion, or with `object` `text_completion` too, one streamed chunk: `text`,
    /// and `finish_reason` and `usage` once `completion_tokens` is known (the last chunk).
    pub(crate) fn body(&self, text: &str, completion_tokens: Option<usize>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": completion_tokens.map(|_| "length"),
            }],
        });
        if let Some(n) = completion_tokens {
            body["usage"] = json!({
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n,
            });
        }
        body
    }
}

/// A request refused or failed: its status, and a JSON body `{"error": {"message", "type"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    outcome: Outcome,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: String, outcome: Outcome) -> Self {
        Self {
            status,
            kind,
            message,
            outcome,
        }
    }

    /// 400: malformed, unsupported or over a limit.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
            Outcome::InvalidRequest,
        )
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
            Outcome::BodyTooLarge,
        )
    }

    /// 500, for what should not happen.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            message.into(),
            Outcome::Failed,
        )
    }

    /// The batcher refused the request.
    pub(crate) fn refused(e: SubmitError<Request>) -> Self {
        match e {
            SubmitError::Overloaded(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded_error",
                "the server is at capacity, in all or for this priority class; retry shortly"
                    .into(),
                Outcome::Overloaded,
            ),
            SubmitError::ShuttingDown(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "the server is shutting down".into(),
                Outcome::ShuttingDown,
            ),
            other => Self::invalid(other.to_string()),
        }
    }

    /// An admitted request that ended without a reply; `timeout_ms` is its class's timeout,
    /// for the message.
    pub(crate) fn failed(done: Result<Answer, BatchError>, timeout_ms: u128) -> Self {
        match done {
            Ok(Ok(_)) => Self::internal("a reply was taken for an error"),
            Ok(Err(e @ (ServeError::EmptyPrompt | ServeError::TooLong { .. }))) => {
                Self::invalid(e.to_string())
            }
            Ok(Err(e @ ServeError::SessionBusy { .. })) => Self::new(
                StatusCode::CONFLICT,
                "conflict_error",
                e.to_string(),
                Outcome::SessionBusy,
            ),
            Ok(Err(e)) => Self::internal(e.to_string()),
            Err(BatchError::Expired) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                format!("the request did not finish within its timeout of {timeout_ms} ms"),
                Outcome::Timeout,
            ),
            Err(e) => Self::internal(e.to_string()),
        }
    }

    /// How the request ended, for the metrics.
    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The JSON error body.
    pub(crate) fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind } })
    }

    /// Counts the request's outcome and makes its response.
    pub(crate) fn finish(self, guard: InFlight) -> Response {
        guard.finish(self.outcome);
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
