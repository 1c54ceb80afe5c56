//! Prometheus HTTP service discovery (`GET /api/sd`): the running instances in the
//! format of Prometheus's `http_sd_configs`, so the apps' own `/metrics` are scraped
//! without editing prometheus.yml when instances are added, removed or restarted.
//!
//! The answer is a JSON list of target groups ([`SdTargetGroup`]), one per instance:
//! `[{"targets": ["127.0.0.1:5001"], "labels": {"service": "web", "instance": "web.1",
//! "drove": "127.0.0.1:9900"}}]`. An instance is listed from the moment it passed its
//! ready probe until it is stopped (ready, draining, drained): a drained instance still
//! runs and still has metrics to read. Instances without a port (workers) are not listed.
//! `?service=NAME` lists one service (one scrape job per service, as `drove export
//! prometheus` writes them). `instance` is drove's stable id (`web.2` keeps its number
//! and base port through restarts), so series stay continuous across rolling restarts.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::Json;
use drove_api::SdTargetGroup;
use drove_supervisor::InstanceState;
use serde::Deserialize;

use super::{AdminState, ApiError};

/// `?service=NAME`.
#[derive(Debug, Deserialize)]
pub(super) struct SdQuery {
    service: Option<String>,
}

/// The target groups of the running instances (see the module doc).
pub(super) async fn targets(
    State(s): State<AdminState>,
    Query(q): Query<SdQuery>,
) -> Result<Json<Vec<SdTargetGroup>>, ApiError> {
    let r = &s.running;
    if let Some(name) = &q.service {
        if !r.supervisor.services().contains(name) {
            return Err(ApiError(
                axum::http::StatusCode::NOT_FOUND,
                format!("no service `{name}`"),
            ));
        }
    }
    let drove = r.admin().to_string();
    let groups = r
        .supervisor
        .status()
        .await
        .into_iter()
        .filter(|i| q.service.as_deref().is_none_or(|s| s == i.id.service))
        .filter(|i| {
            matches!(
                i.state,
                InstanceState::Ready | InstanceState::Draining | InstanceState::Drained
            )
        })
        .filter_map(|i| {
            let port = i.port?;
            let labels = BTreeMap::from([
                ("service".to_string(), i.id.service.clone()),
                ("instance".to_string(), i.id.to_string()),
                ("drove".to_string(), drove.clone()),
            ]);
            Some(SdTargetGroup {
                targets: vec![format!("127.0.0.1:{port}")],
                labels,
            })
        })
        .collect();
    Ok(Json(groups))
}
