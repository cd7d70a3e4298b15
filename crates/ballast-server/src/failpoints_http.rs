//! The failpoint control endpoint of a fault-test build (only compiled with the `failpoints`
//! feature): `GET /debug/failpoints` lists the armed failpoints (`name=action` lines),
//! `PUT /debug/failpoints/<name>` arms one with the request body as its action (the `fail`
//! crate's syntax, docs/failpoints.md), `DELETE /debug/failpoints/<name>` disarms it. etcd's
//! gofail serves the same on its client port.
//!
//! Also [`arm_from_env`]: the `FAILPOINTS=name=action;name=action` variable read at start.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

pub fn router() -> Router {
    Router::new().route("/debug/failpoints", get(list)).route(
        "/debug/failpoints/{name}",
        axum::routing::put(arm).delete(disarm),
    )
}

async fn list() -> String {
    let mut armed = fail::list();
    armed.sort();
    armed
        .into_iter()
        .map(|(name, action)| format!("{name}={action}\n"))
        .collect()
}

async fn arm(Path(name): Path<String>, body: String) -> (StatusCode, String) {
    let action = body.trim();
    match fail::cfg(name.clone(), action) {
        Ok(()) => {
            tracing::warn!(failpoint = %name, action, "failpoint armed");
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("failpoint {name}: invalid action {action:?}: {e}\n"),
        ),
    }
}

async fn disarm(Path(name): Path<String>) -> StatusCode {
    fail::remove(&name);
    tracing::warn!(failpoint = %name, "failpoint disarmed");
    StatusCode::NO_CONTENT
}

/// Arms the failpoints named in `FAILPOINTS` (`name=action;name=action`), as the `fail`
/// crate's `FailScenario::setup` reads it, but with a malformed value as an error instead of
/// a panic.
pub fn arm_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS: {item:?} is not name=action"))?;
        fail::cfg(name.trim(), action.trim())
            .map_err(|e| format!("FAILPOINTS: {name}: invalid action {action:?}: {e}"))?;
        tracing::warn!(
            failpoint = name.trim(),
            action = action.trim(),
            "failpoint armed"
        );
    }
    Ok(())
}
