//! The one error type of the HTTP API: every failure maps to a status and a JSON body here.
//!
//! Bodies are `{"ok":false,"error":"<problem>","field":"<name>"}` (`field` when a request field
//! is at fault). 4xx answers say what the caller must change; 5xx answers say nothing about the
//! broker's internals (the cause is logged where it is handled).

use axum::http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use majordodo_proto::http::{BODY_FIELD, ErrorBody, FieldError};

use super::json_response;
use crate::BrokerError;

/// `WWW-Authenticate` challenge sent with every 401. A Basic challenge makes browsers prompt
/// for (and then cache and replay) a password, so it is sent only when configured
/// (`http.basic_challenge`, added by the router): Basic credentials are accepted either way.
const BEARER_CHALLENGE: &str = "Bearer realm=\"majordodo\"";

/// The Basic challenge sent when `http.basic_challenge` is set.
pub(crate) const BASIC_CHALLENGE: &str = "Basic realm=\"majordodo\", charset=\"UTF-8\"";

/// Seconds a client should wait before retrying an overloaded broker.
const RETRY_AFTER_SECS: &str = "1";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is missing, malformed or out of range (400). Fix the request.
    #[error("bad request: {0}")]
    BadRequest(FieldError),
    /// No valid credentials (401). Send Basic or bearer credentials of a configured user.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Too many failed password logins from this address or for this user (429): password
    /// logins are refused for the given seconds without being checked.
    #[error("password logins locked out for {0} s")]
    LoginsLockedOut(u64),
    /// A `POST` body that is not declared `application/json` (415).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Authenticated, but not allowed to do this (403).
    #[error("forbidden: {0}")]
    Forbidden(FieldError),
    /// No such path (404).
    #[error("not found")]
    NotFound,
    /// The path exists but not with this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body did not arrive in time (408). Retryable.
    #[error("request body not received in time")]
    BodyTimeout,
    /// The body, or a task in it, is too large (413). Not retryable as is.
    #[error("payload too large: {0}")]
    TooLarge(FieldError),
    /// What a field names does not exist: a task, a transaction or a code pool (404). Check the
    /// id.
    #[error("not found: {0}")]
    Missing(FieldError),
    /// What a field names is in a state that does not allow the action (409): a transaction
    /// already committed or rolled back, a task already ended, a code pool id that exists or a
    /// pool in use. Nothing was changed; repeating
    /// the request changes nothing either, unless `retryable` says the state is about to
    /// change.
    #[error("conflict: {0}")]
    Conflict(FieldError, bool),
    /// A limit of the broker is reached (429), such as its open transactions. Retryable once
    /// some are over.
    #[error("too many: {0}")]
    TooMany(FieldError),
    /// The broker could not serve the request: 503 when nothing of it was done (retryable),
    /// 500 `outcome_unknown` when its log failed while writing it, 413 for a task over the log's
    /// record limit.
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    /// A failure of this process (500); the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e)
    }
}

impl ApiError {
    /// The answer to an action the leader refused, naming the request field at fault.
    pub fn refused(e: &majordodo_core::leader::ActionError) -> ApiError {
        use majordodo_core::leader::ActionError as A;
        let problem = e.to_string();
        match e {
            A::NoSuchTransaction(_) => ApiError::Missing(FieldError::new("transaction", problem)),
            A::TransactionEnded(_) => {
                ApiError::Conflict(FieldError::new("transaction", problem), false)
            }
            A::NotTransactionOwner { .. } => {
                ApiError::Forbidden(FieldError::new("transaction", problem))
            }
            A::TooManyTransactions(_) => ApiError::TooMany(FieldError::new("action", problem)),
            A::NoSuchTask(_) => ApiError::Missing(FieldError::new("taskId", problem)),
            A::TaskEnded { .. } => ApiError::Conflict(FieldError::new("taskId", problem), false),
            A::TaskChanging(_) => ApiError::Conflict(FieldError::new("taskId", problem), true),
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::TooMany(_) | ApiError::LoginsLockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) | ApiError::Broker(BrokerError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Broker(BrokerError::OutcomeUnknown(_) | BrokerError::Snapshot(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // The original answered these as 200 with `ok: false`, and its Java client retries
            // (against the leader it discovers again) only that shape.
            ApiError::Broker(
                BrokerError::NotLeader(_)
                | BrokerError::Recovering
                | BrokerError::Stopped
                | BrokerError::Unavailable(_),
            ) => StatusCode::OK,
            ApiError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        let (error, field, retryable) = match self {
            ApiError::BadRequest(e)
            | ApiError::Forbidden(e)
            | ApiError::TooLarge(e)
            | ApiError::Missing(e) => (e.problem.clone(), Some(e.field.clone()), false),
            ApiError::Conflict(e, retryable) => {
                (e.problem.clone(), Some(e.field.clone()), *retryable)
            }
            ApiError::TooMany(e) => (e.problem.clone(), Some(e.field.clone()), true),
            ApiError::Unauthorized(why) => ((*why).to_owned(), None, false),
            ApiError::LoginsLockedOut(secs) => (
                format!(
                    "too many failed logins from this address or for this user: password logins \
                     are refused for {secs} s; tokens and passwords verified before still work"
                ),
                Some("authorization".to_owned()),
                true,
            ),
            ApiError::UnsupportedMediaType => (
                "a POST body must be JSON, sent with Content-Type: application/json".to_owned(),
                Some("content-type".to_owned()),
                false,
            ),
            ApiError::NotFound => (
                "no such path; the API is at /majordodo".to_owned(),
                None,
                false,
            ),
            ApiError::MethodNotAllowed => (
                "method not allowed; use GET for views and POST for actions".to_owned(),
                None,
                false,
            ),
            ApiError::BodyTimeout => (
                "request body not received in time".to_owned(),
                Some(BODY_FIELD.to_owned()),
                true,
            ),
            ApiError::Broker(e) => broker_error_body(e),
            ApiError::Internal(_) => ("internal error".to_owned(), None, false),
        };
        let leader = match self {
            ApiError::Broker(BrokerError::NotLeader(leader)) => leader.clone(),
            _ => None,
        };
        ErrorBody {
            ok: false,
            error,
            field,
            retryable,
            leader,
        }
    }
}

/// The words clients see for a broker condition: each starts with its error code (the
/// original's strings where it had one, which its clients match on). Only the conditions in which
/// nothing of the request was done are retryable.
fn broker_error_body(e: &BrokerError) -> (String, Option<String>, bool) {
    let (text, retryable) = match e {
        BrokerError::NotLeader(_) => ("broker_not_leader: this broker is not the leader", true),
        BrokerError::Recovering => ("recovery_in_progress: the broker is recovering", true),
        BrokerError::Stopped => ("broker_not_started: the broker is not running", true),
        BrokerError::Unavailable(_) => (
            "broker_not_started: the broker cannot write its log; nothing was done, retry later",
            true,
        ),
        BrokerError::OutcomeUnknown(_) => (
            "outcome_unknown: the broker's log failed while this request was being written; \
             its tasks may or may not exist: look them up before submitting again",
            false,
        ),
        BrokerError::Overloaded(_) => ("broker_overloaded: too many requests; retry later", true),
        // Writing a snapshot for `GET /snapshot` failed: internal, the cause is logged.
        BrokerError::Snapshot(_) => ("internal error", false),
        BrokerError::TooLarge { field, detail, .. } => {
            return (detail.clone(), Some((*field).to_owned()), false);
        }
        // The HTTP layer maps these to 4xx answers naming the field (see `http::code_pool_error`);
        // this text is for any other path.
        BrokerError::CodePool { refusal, .. } => return (refusal.to_string(), None, false),
        BrokerError::Needs { refusal, .. } => return (refusal.to_string(), None, false),
    };
    (text.to_owned(), None, retryable)
}

/// Every error code an answer of this API can start with, for the documentation test.
pub const ERROR_CODES: [&str; 5] = [
    "broker_not_leader",
    "recovery_in_progress",
    "broker_not_started",
    "outcome_unknown",
    "broker_overloaded",
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(what) => tracing::error!(what, "http request failed"),
            ApiError::Broker(
                e @ (BrokerError::Unavailable(_)
                | BrokerError::OutcomeUnknown(_)
                | BrokerError::Stopped),
            ) => {
                tracing::warn!(error = %e, "http request refused: broker unavailable");
            }
            _ => tracing::debug!(error = %self, "http request refused"),
        }
        let mut response = json_response(self.status(), &self.body());
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
            }
            ApiError::LoginsLockedOut(secs) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::MethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST, OPTIONS"));
            }
            ApiError::Broker(BrokerError::Overloaded(_)) | ApiError::TooMany(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let res = e.into_response();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn broker_conditions_answer_the_original_retryable_shape_and_nothing_internal() {
        // Goal: each BrokerError in which nothing happened is retryable with its word and no
        // internal detail: the three the original's Java client retries are 200 with
        // `ok: false` (the only shape it retries), overload is a 503 with Retry-After; a log
        // failure during the write is a non-retryable `outcome_unknown`; not-leader names the
        // leader.
        let ok = StatusCode::OK;
        let cases = [
            (BrokerError::NotLeader(None), "broker_not_leader", ok),
            (BrokerError::Recovering, "recovery_in_progress", ok),
            (BrokerError::Stopped, "broker_not_started", ok),
            (
                BrokerError::Unavailable("disk /dev/sda1 on fire".into()),
                "broker_not_started",
                ok,
            ),
            (
                BrokerError::Overloaded("queue full"),
                "broker_overloaded",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (e, word, want) in cases {
            let (status, headers, body) = answer(ApiError::Broker(e.clone())).await;
            assert_eq!(status, want, "{e:?}");
            let text = body["error"].as_str().unwrap();
            assert!(text.starts_with(word), "{e:?}: {text}");
            assert!(
                !text.contains("sda1") && !text.contains("queue full"),
                "{text}"
            );
            assert_eq!(body["retryable"], serde_json::json!(true));
            assert_eq!(body["ok"], serde_json::json!(false));
            assert_eq!(
                headers.contains_key(RETRY_AFTER),
                matches!(e, BrokerError::Overloaded(_))
            );
        }
        let (_, _, body) = answer(ApiError::Broker(BrokerError::NotLeader(Some(
            "http://b2:7364/majordodo".into(),
        ))))
        .await;
        assert_eq!(
            body["leader"],
            serde_json::json!("http://b2:7364/majordodo")
        );
        let (status, _, body) = answer(ApiError::Broker(BrokerError::OutcomeUnknown(
            "write /dev/sda1".into(),
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = body["error"].as_str().unwrap();
        assert!(text.starts_with("outcome_unknown"), "{text}");
        assert!(!text.contains("sda1"), "{text}");
        assert!(body.get("retryable").is_none(), "not retryable: {body}");
        let (status, _, body) = answer(ApiError::Broker(BrokerError::TooLarge {
            task: 0,
            field: "data",
            detail: "is 9 bytes".into(),
        }))
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["field"], serde_json::json!("data"));
        assert!(body.get("retryable").is_none());
        let (status, _, body) = answer(ApiError::Internal("secret detail")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], serde_json::json!("internal error"));
    }

    #[tokio::test]
    async fn every_error_code_is_produced_by_some_broker_error() {
        // Goal: ERROR_CODES lists exactly the codes the broker errors produce.
        let produced: std::collections::BTreeSet<String> = [
            BrokerError::NotLeader(None),
            BrokerError::Recovering,
            BrokerError::Stopped,
            BrokerError::Unavailable(String::new()),
            BrokerError::OutcomeUnknown(String::new()),
            BrokerError::Overloaded(""),
        ]
        .iter()
        .map(|e| {
            let (text, _, _) = broker_error_body(e);
            text.split(':').next().unwrap().to_owned()
        })
        .collect();
        let listed: std::collections::BTreeSet<String> =
            ERROR_CODES.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(produced, listed);
    }
}
