//! Status of the appliance and its subsystems, health probes, metrics and the audit log.

use super::Page;
use crate::auth::Caller;
use crate::extract::Query;
use crate::problem::{ApiResult, Problem};
use crate::{AppState, rfc3339};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use model::subsystem::Health;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use store::Role;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(audit))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

static OPENAPI_JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps the generated document for `/api/v1/openapi.json` (it exists only once the router is built).
pub fn publish_openapi(doc: &utoipa::openapi::OpenApi) {
    let _ = OPENAPI_JSON.set(doc.to_pretty_json().unwrap_or_default());
}

/// This document: OpenAPI 3.1, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "system", security(()),
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    let doc = OPENAPI_JSON.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// The probes and metrics also answer at the root, where load balancers and Prometheus look by default.
pub fn unversioned() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(root_healthz)).routes(routes!(root_readyz)).routes(routes!(root_metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubsystemView {
    /// The newest snapshot generation it applied successfully.
    pub applied_generation: Option<u64>,
    pub health: Health,
    pub detail: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PendingView {
    pub revision: u64,
    pub revert_to: u64,
    pub deadline: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: u64,
    /// The configuration revision in force.
    pub revision: u64,
    /// The newest compiled snapshot.
    pub generation: u64,
    /// The revision that snapshot was compiled from.
    pub snapshot_revision: u64,
    pub services: usize,
    pub allocations: usize,
    pub subsystems: BTreeMap<String, SubsystemView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_confirm: Option<PendingView>,
    pub store_bytes: u64,
}

/// The current generation and, per subsystem, the generation it applied and its state.
#[utoipa::path(get, path = "/status", tag = "system", responses((status = 200, body = StatusView)))]
async fn status(State(state): State<AppState>, _caller: Caller) -> ApiResult<axum::Json<StatusView>> {
    let current = state.control.current();
    let snapshot = state.control.pipeline().latest();
    let subsystems = state
        .status
        .all()
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                SubsystemView {
                    applied_generation: s.applied_generation,
                    health: s.health,
                    detail: s.detail,
                    updated_at: rfc3339(s.updated_at),
                },
            )
        })
        .collect();
    let pending_confirm = state.control.pending_confirm().await?.map(|p| PendingView {
        revision: p.revision,
        revert_to: p.revert_to,
        deadline: rfc3339(p.deadline),
    });
    Ok(axum::Json(StatusView {
        version: state.version.to_string(),
        uptime_seconds: state.started.elapsed().as_secs(),
        revision: current.revision,
        generation: snapshot.generation,
        snapshot_revision: snapshot.revision,
        services: snapshot.services.len(),
        allocations: current.allocations.len(),
        subsystems,
        pending_confirm,
        store_bytes: state.control.store().size_bytes(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `success`, `denied`, `throttled` or `failure`.
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// The audit log, newest first: every change and every login attempt, with its outcome (admin only).
#[utoipa::path(get, path = "/audit", tag = "system", params(AuditParams),
    responses((status = 200, body = Page<AuditView>), (status = 403, body = Problem)))]
async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<AuditParams>,
) -> ApiResult<axum::Json<Page<AuditView>>> {
    caller.require(Role::Admin)?;
    let limit = super::page_limit(p.limit)?;
    let rows = state.control.store().audit(p.cursor, u32::try_from(limit + 1).unwrap_or(1001)).await?;
    let Page { items: rows, next_cursor } = super::page_of(rows, limit, |r| r.id.to_string());
    let items = rows
        .into_iter()
        .map(|r| AuditView {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.entry.actor,
            client: r.entry.client,
            method: r.entry.method,
            path: r.entry.path,
            status: r.entry.status,
            outcome: r.entry.outcome,
            request_id: r.entry.request_id,
            detail: r.entry.detail,
        })
        .collect();
    Ok(axum::Json(Page { items, next_cursor }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()), responses((status = 200, body = Probe)))]
async fn healthz() -> axum::Json<Probe> {
    axum::Json(Probe { status: "ok".into() })
}

/// Readiness: the store answers and a snapshot has been compiled.
#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses((status = 200, body = Probe), (status = 503, body = Probe)))]
async fn readyz(State(state): State<AppState>) -> Response {
    ready(&state).await
}

async fn ready(state: &AppState) -> Response {
    let store_ok = state.control.store().ping().await;
    let compiled = state.control.pipeline().generation() > 0;
    if store_ok && compiled {
        axum::Json(Probe { status: "ready".into() }).into_response()
    } else {
        let why = if store_ok { "no snapshot compiled yet" } else { "store not answering" };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Probe { status: why.into() })).into_response()
    }
}

/// Prometheus metrics: process, HTTP, store and snapshot. Needs a viewer (a token is the usual way).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = Problem)))]
async fn metrics(State(state): State<AppState>, _caller: Caller) -> Response {
    render(&state)
}

fn render(state: &AppState) -> Response {
    metrics::gauge!("portico_store_bytes").set(state.control.store().size_bytes() as f64);
    metrics::gauge!("portico_allocations").set(state.control.current().allocations.len() as f64);
    let text = (state.render_metrics)();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Liveness (same as /api/v1/healthz).
#[utoipa::path(get, path = "/healthz", tag = "system", security(()), operation_id = "root_healthz", responses((status = 200, body = Probe)))]
async fn root_healthz() -> axum::Json<Probe> {
    healthz().await
}

/// Readiness (same as /api/v1/readyz).
#[utoipa::path(get, path = "/readyz", tag = "system", security(()), operation_id = "root_readyz",
    responses((status = 200, body = Probe), (status = 503, body = Probe)))]
async fn root_readyz(State(state): State<AppState>) -> Response {
    ready(&state).await
}

/// Prometheus metrics (same as /api/v1/metrics).
#[utoipa::path(get, path = "/metrics", tag = "system", operation_id = "root_metrics",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = Problem)))]
async fn root_metrics(State(state): State<AppState>, _caller: Caller) -> Response {
    render(&state)
}
