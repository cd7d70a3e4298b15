//! Plain HTTP endpoints on the client port: `/health` and `/version`, with etcd's JSON shapes.
//! (`/metrics`, `/livez`, `/readyz` and the `/v3/` JSON gateway arrive with their issues.)

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::member::Member;

pub fn router(member: Arc<Member>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(member)
}

/// etcd reports the cluster version as "major.minor.0".
fn cluster_version(v: &str) -> String {
    let mut it = v.split('.');
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}.0"),
        _ => v.to_string(),
    }
}

async fn version(State(m): State<Arc<Member>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "etcdserver": m.cfg.emulated_etcd_version,
        "etcdcluster": cluster_version(&m.cfg.emulated_etcd_version),
    }))
}

#[derive(Deserialize)]
struct HealthQuery {
    serializable: Option<String>,
}

/// Healthy = not stopped, a leader exists, and (unless `?serializable=true`) a linearizable read
/// barrier completes in time — the same questions etcd's `/health` asks.
async fn health(State(m): State<Arc<Member>>, Query(q): Query<HealthQuery>) -> impl IntoResponse {
    let reason = if m.is_stopped() {
        Some("STOPPED")
    } else if m.status.leader() == 0 {
        Some("RAFT NO LEADER")
    } else if q.serializable.as_deref() != Some("true") {
        match tokio::time::timeout(Duration::from_secs(2), m.read_barrier()).await {
            Ok(Ok(())) => None,
            _ => Some("QGET ERROR"),
        }
    } else {
        None
    };
    let (code, body) = match reason {
        None => (
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": r}),
        ),
    };
    (code, Json(body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_version_drops_patch() {
        assert_eq!(super::cluster_version("3.6.2"), "3.6.0");
    }
}
