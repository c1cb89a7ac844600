//! The L4 proxy's state: its I/O engine, and per listener (VIP port) and backend the connections, bytes,
//! refusals, connect errors, health and ejections. The proxy's configuration lives in each service's `proxy`
//! field and in `settings.proxy`.

use crate::AppState;
use crate::auth::Caller;
use crate::extract::Query;
use axum::extract::State;
use model::proxy::ProxyStatus;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(proxy_status))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProxyStatusParams {
    /// Only the listeners of this service.
    pub service: Option<String>,
}

/// The engine, and every listener with its backends: active and total connections, bytes each way,
/// refusals by reason, connect errors, health-check state and outlier ejections.
#[utoipa::path(get, path = "/proxy/status", tag = "proxy", params(ProxyStatusParams),
    responses((status = 200, body = ProxyStatus)))]
async fn proxy_status(
    State(state): State<AppState>,
    _caller: Caller,
    Query(params): Query<ProxyStatusParams>,
) -> axum::Json<ProxyStatus> {
    let mut status = state.proxy.status();
    if let Some(service) = &params.service {
        status.listeners.retain(|l| &l.service == service);
    }
    axum::Json(status)
}
