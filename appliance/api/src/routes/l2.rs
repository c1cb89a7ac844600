//! L2 announcement: which VIPs the appliance answers ARP and Neighbor Solicitations for, on which interfaces
//! (`l2_advertisements`, configuration like any other object), and how the responder is doing.

use super::objects::{Object, create_object, delete_object, get_object, list_objects, put_object};
use super::{ListParams, Page};
use crate::AppState;
use crate::auth::Caller;
use crate::extract::{Body, Query};
use crate::problem::{ApiResult, Problem};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use model::config::{Config, Kind};
use model::l2::{L2Advertisement, L2InterfaceStatus};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_advertisements, create_advertisement))
        .routes(routes!(get_advertisement, put_advertisement, delete_advertisement))
        .routes(routes!(l2_status))
}

impl Object for L2Advertisement {
    const KIND: Kind = Kind::L2Advertisement;
    const LIST: &'static str = "l2_advertisements";
    const PATH: &'static str = "/api/v1/l2/advertisements";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.l2_advertisements
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.l2_advertisements
    }
}

/// List L2 advertisements.
#[utoipa::path(get, path = "/l2/advertisements", tag = "l2", params(ListParams), responses((status = 200, body = Page<L2Advertisement>)))]
async fn list_advertisements(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<L2Advertisement>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Announce VIPs on interfaces by ARP and NDP.
#[utoipa::path(post, path = "/l2/advertisements", tag = "l2", request_body = L2Advertisement,
    responses((status = 201, body = L2Advertisement, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_advertisement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(advertisement): Body<L2Advertisement>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, advertisement).await
}

/// Get an L2 advertisement.
#[utoipa::path(get, path = "/l2/advertisements/{name}", tag = "l2", params(("name" = String, Path)),
    responses((status = 200, body = L2Advertisement, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_advertisement(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    get_object::<L2Advertisement>(&state, &name).await
}

/// Replace (or create) an L2 advertisement.
#[utoipa::path(put, path = "/l2/advertisements/{name}", tag = "l2", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = L2Advertisement,
    responses((status = 200, body = L2Advertisement), (status = 201, body = L2Advertisement), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_advertisement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(advertisement): Body<L2Advertisement>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, advertisement).await
}

/// Stop announcing by this advertisement (VIPs still named by another one stay announced).
#[utoipa::path(delete, path = "/l2/advertisements/{name}", tag = "l2", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_advertisement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<L2Advertisement>(&state, &caller, &headers, &name).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct L2StatusList {
    pub items: Vec<L2InterfaceStatus>,
}

/// Per interface: link up, the MAC answers carry, and per VIP whether it is announced, requests answered and
/// gratuitous announcements sent; frames ignored and the last error.
#[utoipa::path(get, path = "/l2/status", tag = "l2", responses((status = 200, body = L2StatusList)))]
async fn l2_status(State(state): State<AppState>, _caller: Caller) -> axum::Json<L2StatusList> {
    let mut items = state.l2.status();
    items.sort_by(|a, b| a.interface.cmp(&b.interface));
    axum::Json(L2StatusList { items })
}
