//! The compiled snapshot, read-only: what the appliance is serving right now (static, global and cluster
//! services with their VIPs and backends), as opposed to what is configured.

use super::{ListParams, Page, paginate};
use crate::AppState;
use crate::auth::Caller;
use crate::extract::Query;
use crate::problem::ApiResult;
use axum::extract::State;
use model::snapshot::{Origin, ServiceEntry};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(snapshot_services)).routes(routes!(snapshot_routes))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PortView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
    pub target_port: u16,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackendView {
    pub address: String,
    /// Port by service port name (Kubernetes endpoints) or for every port.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    pub weight: u32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// What the proxy's active health checks say (`unchecked` without checks).
    pub health: model::health::BackendHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotService {
    /// `web`, `global/<name>` or `<cluster>/<namespace>/<name>`.
    pub name: String,
    /// `static`, `global` or `cluster`.
    pub origin: String,
    pub vips: Vec<String>,
    pub ports: Vec<PortView>,
    pub backends: Vec<BackendView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_error: Option<String>,
    /// The global service whose VIP this member uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<String>,
    /// Problems with what the Service asks for (unreadable annotations, unsupported ports).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the L4 proxy serves it (for a cluster Service: from its `sessionAffinity` and `portico.io/proxy`).
    pub proxy: model::proxy::ProxyPolicy,
}

fn view(s: &ServiceEntry) -> SnapshotService {
    SnapshotService {
        name: s.name.clone(),
        origin: match s.origin {
            Origin::Static => "static",
            Origin::Global => "global",
            Origin::Cluster { .. } => "cluster",
        }
        .into(),
        vips: s.vips.iter().map(ToString::to_string).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| PortView {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol.to_string(),
                target_port: p.target_port,
            })
            .collect(),
        backends: s
            .backends
            .iter()
            .map(|b| {
                let mut ports: BTreeMap<String, u16> =
                    b.named_ports.iter().map(|(n, p, _)| (n.clone().unwrap_or_default(), *p)).collect();
                if let Some(p) = b.port {
                    ports.insert("*".into(), p);
                }
                BackendView {
                    address: b.ip.to_string(),
                    ports,
                    weight: b.weight,
                    ready: b.ready,
                    serving: b.serving,
                    terminating: b.terminating,
                    health: b.health,
                    zone: b.zone.clone(),
                    node: b.node.clone(),
                }
            })
            .collect(),
        allocation_error: s.allocation_error.clone(),
        global: s.global.clone(),
        warnings: s.warnings.clone(),
        proxy: (*s.proxy).clone(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotPage {
    /// The generation these services are from.
    pub generation: u64,
    pub items: Vec<SnapshotService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The services the appliance serves right now (static, global and from clusters), with VIPs and backends,
/// from the newest snapshot. `prefix` filters by name (e.g. `k1/` for one cluster).
#[utoipa::path(get, path = "/snapshot/services", tag = "system", params(ListParams), responses((status = 200, body = SnapshotPage)))]
async fn snapshot_services(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<SnapshotPage>> {
    let snapshot = state.control.pipeline().latest();
    // Sorted by name in the snapshot already.
    let Page { items, next_cursor } = paginate(&snapshot.services, |s: &Arc<ServiceEntry>| s.name.as_str(), &p)?;
    Ok(axum::Json(SnapshotPage {
        generation: snapshot.generation,
        items: items.iter().map(|s| view(s)).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteView {
    pub cluster: String,
    pub namespace: String,
    pub ingress: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub path_type: String,
    /// `<cluster>/<namespace>/<service>`
    pub service: String,
    /// A port number or name.
    pub port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoutePage {
    pub generation: u64,
    pub items: Vec<RouteView>,
}

/// HTTP routes from the clusters' Ingresses that are ours, as the appliance serves them.
#[utoipa::path(get, path = "/snapshot/routes", tag = "system", responses((status = 200, body = RoutePage)))]
async fn snapshot_routes(State(state): State<AppState>, _caller: Caller) -> axum::Json<RoutePage> {
    let snapshot = state.control.pipeline().latest();
    let items = snapshot
        .routes
        .iter()
        .map(|r| RouteView {
            cluster: r.cluster.clone(),
            namespace: r.namespace.clone(),
            ingress: r.ingress.clone(),
            host: r.host.clone(),
            path: r.path.clone(),
            path_type: r.path_type.clone(),
            service: r.service.clone(),
            port: match &r.port {
                model::observed::ServicePortRef::Number(n) => n.to_string(),
                model::observed::ServicePortRef::Name(n) => n.clone(),
            },
            tls_secret: r.tls_secret.clone(),
        })
        .collect();
    axum::Json(RoutePage { generation: snapshot.generation, items })
}
