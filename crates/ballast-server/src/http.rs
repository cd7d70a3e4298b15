//! Plain HTTP endpoints on the client port: `/health` and `/version`, with etcd's JSON shapes.
//! (`/metrics`, `/livez`, `/readyz` and the `/v3/` JSON gateway arrive with their issues.)

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use ballast_proto::etcdserverpb::AlarmType;

use crate::alarm::alarm_name;
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

/// The parameters of a `/health` query: `serializable=true`, and each `exclude=<ALARM>`.
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthQuery {
    serializable: bool,
    exclude: Vec<String>,
}

impl HealthQuery {
    fn parse(raw: Option<&str>) -> HealthQuery {
        let mut q = HealthQuery::default();
        for pair in raw.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "serializable" => q.serializable = v == "true",
                "exclude" if !v.is_empty() => q.exclude.push(v.to_string()),
                _ => {}
            }
        }
        q
    }
}

/// The first raised alarm `/health` does not exclude, as etcd's reason ("ALARM NOSPACE").
fn alarm_reason(raised: &[i32], exclude: &[String]) -> Option<String> {
    raised
        .iter()
        .map(|a| alarm_name(*a))
        .find(|name| !exclude.iter().any(|e| e == name))
        .map(|name| match name.as_str() {
            "NOSPACE" | "CORRUPT" => format!("ALARM {name}"),
            _ => "ALARM UNKNOWN".to_string(),
        })
}

/// Healthy = no raised alarm (but those in `?exclude=`), not stopped, a leader exists, and
/// (unless `?serializable=true`) a linearizable read barrier completes in time — the same
/// questions etcd's `/health` asks, in its order.
async fn health(State(m): State<Arc<Member>>, RawQuery(raw): RawQuery) -> Response {
    let q = HealthQuery::parse(raw.as_deref());
    let raised: Vec<i32> = m
        .alarms
        .get(AlarmType::None as i32)
        .iter()
        .map(|a| a.alarm)
        .collect();
    let reason = if let Some(r) = alarm_reason(&raised, &q.exclude) {
        Some(r)
    } else if m.is_stopped() {
        Some("STOPPED".to_string())
    } else if m.status.leader() == 0 {
        Some("RAFT NO LEADER".to_string())
    } else if !q.serializable {
        match tokio::time::timeout(Duration::from_secs(2), m.read_barrier()).await {
            Ok(Ok(())) => None,
            _ => Some("QGET ERROR".to_string()),
        }
    } else {
        None
    };
    health_response(&m.cfg.emulated_etcd_version, reason)
}

/// etcd 3.4's answer is `{"health":"true"}`, or `{"health":"false"}` plus a newline as a
/// plain-text 503 (Go's `http.Error`); from 3.5 the JSON also carries the reason.
fn health_response(version: &str, reason: Option<String>) -> Response {
    let healthy = reason.is_none();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if version.starts_with("3.4.") || version == "3.4" {
        let mut body = format!("{{\"health\":\"{healthy}\"}}");
        if !healthy {
            body.push('\n');
        }
        let mut resp = (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
        if !healthy {
            resp.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
        }
        return resp;
    }
    let body = serde_json::json!({
        "health": healthy.to_string(),
        "reason": reason.unwrap_or_default(),
    });
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_version_drops_patch() {
        assert_eq!(super::cluster_version("3.6.2"), "3.6.0");
    }

    #[test]
    fn health_query_takes_every_exclude() {
        assert_eq!(HealthQuery::parse(None), HealthQuery::default());
        let q = HealthQuery::parse(Some(
            "exclude=NOSPACE&serializable=true&exclude=CORRUPT&exclude=",
        ));
        assert!(q.serializable);
        assert_eq!(q.exclude, vec!["NOSPACE", "CORRUPT"]);
    }

    #[test]
    fn alarms_fail_health_unless_excluded() {
        let nospace = AlarmType::Nospace as i32;
        let corrupt = AlarmType::Corrupt as i32;
        assert_eq!(alarm_reason(&[], &[]), None);
        assert_eq!(
            alarm_reason(&[nospace], &[]).as_deref(),
            Some("ALARM NOSPACE")
        );
        assert_eq!(alarm_reason(&[nospace], &["NOSPACE".into()]), None);
        assert_eq!(
            alarm_reason(&[nospace, corrupt], &["NOSPACE".into()]).as_deref(),
            Some("ALARM CORRUPT")
        );
    }

    #[test]
    fn health_bodies_follow_the_emulated_version() {
        let body = |r: Response| {
            let (parts, body) = r.into_parts();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let bytes = rt.block_on(axum::body::to_bytes(body, 1024)).unwrap();
            (parts.status, String::from_utf8(bytes.to_vec()).unwrap())
        };
        assert_eq!(
            body(health_response("3.4.23", Some("ALARM NOSPACE".into()))),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"health\":\"false\"}\n".to_string()
            )
        );
        assert_eq!(
            body(health_response("3.4.23", None)),
            (StatusCode::OK, "{\"health\":\"true\"}".to_string())
        );
        let (code, text) = body(health_response("3.6.0", Some("ALARM NOSPACE".into())));
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"health": "false", "reason": "ALARM NOSPACE"})
        );
    }
}
