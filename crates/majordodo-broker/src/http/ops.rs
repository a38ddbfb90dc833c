//! The operations endpoints: `/health` (the process answers), `/ready` (the broker can serve:
//! a leader ready for writes, or a follower caught up) and `/metrics` (Prometheus text).
//!
//! `/health` and `/ready` need no credentials: probes of load balancers and orchestrators send
//! none, and the answers say only the role and the lag. `/metrics` names users and task types,
//! so who may read it is `http.metrics_access` (default: without credentials from loopback
//! only, an admin's from elsewhere).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use majordodo_proto::http::FieldError;
use serde::Serialize;

use super::config::MetricsAccess;
use super::{Api, ApiError, json_response, peer_of};
use crate::BrokerError;
use crate::handle::Role;
use crate::metrics::{self, Exposition, Sample};

/// Where the liveness probe is served.
pub const HEALTH_PATH: &str = "/health";
/// Where the readiness probe is served.
pub const READY_PATH: &str = "/ready";
/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// Longest `/ready` and `/metrics` wait for the broker's read: a broker whose dispatcher
/// cannot answer in this time is not ready, and a scrape should fail rather than pile up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `/health` and `/ready`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    ok: bool,
    /// `/health`: always `alive`; `/ready`: `ready` or `not_ready`.
    status: &'static str,
    broker_id: String,
    /// `LEADER`, `FOLLOWER`, `RECOVERY` or `CLOSED`; absent when the broker did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// On a follower, log entries behind the leader's published position.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
    /// Why the broker is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /health`: 200 while the process runs. It does not ask the dispatcher, so it answers
/// also while the broker recovers or is busy.
pub(super) async fn health(State(api): State<Arc<Api>>) -> Response {
    json_response(
        StatusCode::OK,
        &Probe {
            ok: true,
            status: "alive",
            broker_id: api.broker.broker_id().to_owned(),
            role: None,
            lag: None,
            error: None,
        },
    )
}

/// Whether a broker in `role`, `lag` entries behind its leader, is ready; the reason if not.
fn readiness(role: Role, lag: Option<u64>, max_lag: u64) -> Result<(), String> {
    match role {
        Role::Leader => Ok(()),
        Role::Follower => match lag {
            Some(lag) if lag <= max_lag => Ok(()),
            Some(lag) => Err(format!(
                "the follower is {lag} log entries behind the leader (http.ready_max_lag is {max_lag})"
            )),
            None => Err("the leader or its log position is not known yet".to_owned()),
        },
        Role::Recovering => Err("the broker is recovering its state".to_owned()),
        Role::Closed => Err("the broker has stopped".to_owned()),
    }
}

/// `GET /ready`: 200 when this broker leads and accepts writes, or follows at most
/// `http.ready_max_lag` entries behind the leader; 503 otherwise (recovering, lagging, no
/// leader known, stopped, or the broker did not answer in time).
pub(super) async fn ready(State(api): State<Arc<Api>>) -> Response {
    let max_lag = api.settings.ready_max_lag;
    let read = api.broker.query(|v| (v.role, metrics::replication_lag(v)));
    let (role, lag, verdict) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok((role, lag))) => (Some(role), lag, readiness(role, lag, max_lag)),
        Ok(Err(BrokerError::Recovering)) => (
            Some(Role::Recovering),
            None,
            readiness(Role::Recovering, None, max_lag),
        ),
        Ok(Err(_)) => (
            Some(Role::Closed),
            None,
            readiness(Role::Closed, None, max_lag),
        ),
        Err(_) => (
            None,
            None,
            Err(format!(
                "the broker did not answer within {} s",
                READ_TIMEOUT.as_secs()
            )),
        ),
    };
    let ok = verdict.is_ok();
    let mut res = json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &Probe {
            ok,
            status: if ok { "ready" } else { "not_ready" },
            broker_id: api.broker.broker_id().to_owned(),
            role: role.map(Role::as_str),
            lag: lag.filter(|_| role == Some(Role::Follower)),
            error: verdict.err(),
        },
    );
    if !ok {
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    res
}

/// `GET /metrics`: the Prometheus text format (see [`crate::metrics`]). Also while the broker
/// recovers (then without the figures read from the state).
pub(super) async fn metrics(
    State(api): State<Arc<Api>>,
    req: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(&req);
    let loopback = peer.is_some_and(|p| p.to_canonical().is_loopback());
    let open = match api.settings.metrics_access {
        MetricsAccess::Open => true,
        MetricsAccess::Loopback => loopback,
        MetricsAccess::Admin => false,
    };
    if !open {
        let principal = api.auth.authenticate(req.headers(), peer).await?;
        if !principal.is_admin() {
            return Err(ApiError::Forbidden(FieldError::new(
                "user",
                format!(
                    "user {} is not an admin: only admins read the metrics (http.metrics_access)",
                    principal.name
                ),
            )));
        }
    }
    let _slot = api
        .requests
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Internal("request limiter closed"))?;
    let top_n = api.settings.metrics_top_n;
    let scan = api.settings.scan_budget;
    let read = api
        .broker
        .query(move |v| (v.role, Sample::take(v, top_n, scan)));
    let (role, sample) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok((role, sample))) => (Some(role), Some(sample)),
        Ok(Err(BrokerError::Recovering)) => (Some(Role::Recovering), None),
        Ok(Err(_)) => (Some(Role::Closed), None),
        Err(_) => {
            return Err(ApiError::Broker(BrokerError::Overloaded(
                "the broker did not answer the metrics read in time",
            )));
        }
    };
    let broker = api.broker.clone();
    let snapshot_age = tokio::task::spawn_blocking(move || broker.snapshot_age())
        .await
        .ok()
        .flatten();
    let text = metrics::encode(Exposition {
        role,
        sample,
        metrics: api.broker.metrics().clone(),
        auth: api.auth.counters(),
        snapshot_age,
    });
    Ok((
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_role_and_the_lag() {
        // Goal: a leader is ready; a follower only with a known lag within the bound; a
        // recovering or stopped broker never.
        assert!(readiness(Role::Leader, None, 0).is_ok());
        assert!(readiness(Role::Follower, Some(10), 10).is_ok());
        let behind = readiness(Role::Follower, Some(11), 10).unwrap_err();
        assert!(behind.contains("11 log entries behind"), "{behind}");
        assert!(readiness(Role::Follower, None, 10).is_err());
        assert!(readiness(Role::Recovering, None, 10).is_err());
        assert!(readiness(Role::Closed, None, 10).is_err());
    }
}
