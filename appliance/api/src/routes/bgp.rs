//! BGP: neighbours (`bgp_peers`, configuration like any other object), their live sessions, what each
//! announces to us (Adj-RIB-In, never installed), and which VIP is announced to which peer. The speaker itself
//! is configured in `settings.bgp`.

use super::objects::{Object, create_object, delete_object, get_object, list_objects, put_object};
use super::{ListParams, Page, paginate};
use crate::AppState;
use crate::auth::Caller;
use crate::extract::{Body, Query};
use crate::problem::{ApiError, ApiResult, Problem};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use model::bgp::{Announcement, BgpPeer, PeerStatus, ReceivedRoute, SessionState};
use model::config::{Config, Kind};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_peers, create_peer))
        .routes(routes!(get_peer, put_peer, delete_peer))
        .routes(routes!(peer_status))
        .routes(routes!(peer_routes))
        .routes(routes!(sessions))
        .routes(routes!(announcements))
}

impl Object for BgpPeer {
    const KIND: Kind = Kind::BgpPeer;
    const LIST: &'static str = "bgp_peers";
    const PATH: &'static str = "/api/v1/bgp/peers";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.bgp_peers
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.bgp_peers
    }
    fn for_output(&self) -> Self {
        BgpPeer { password: None, ..self.clone() }
    }
    fn carry_from(&mut self, old: &Self) {
        if self.password.is_none() {
            self.password = old.password.clone();
        }
    }
}

/// List BGP neighbours (TCP-MD5 passwords are never shown).
#[utoipa::path(get, path = "/bgp/peers", tag = "bgp", params(ListParams), responses((status = 200, body = Page<BgpPeer>)))]
async fn list_peers(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<BgpPeer>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Add a BGP neighbour. Needs `settings.bgp` (the appliance's AS number and router id) first.
#[utoipa::path(post, path = "/bgp/peers", tag = "bgp", request_body = BgpPeer,
    responses((status = 201, body = BgpPeer, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_peer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(peer): Body<BgpPeer>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, peer).await
}

/// Get a BGP neighbour (without its password).
#[utoipa::path(get, path = "/bgp/peers/{name}", tag = "bgp", params(("name" = String, Path)),
    responses((status = 200, body = BgpPeer, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_peer(State(state): State<AppState>, _caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    get_object::<BgpPeer>(&state, &name).await
}

/// Replace (or create) a BGP neighbour. A `password` left out keeps the stored one; to remove it, delete the
/// peer and add it again. Changing only the advertisement policy keeps the session up.
#[utoipa::path(put, path = "/bgp/peers/{name}", tag = "bgp", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = BgpPeer,
    responses((status = 200, body = BgpPeer), (status = 201, body = BgpPeer), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_peer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(peer): Body<BgpPeer>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, peer).await
}

/// Remove a BGP neighbour: its session is closed with a Cease (peer de-configured).
#[utoipa::path(delete, path = "/bgp/peers/{name}", tag = "bgp", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_peer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<BgpPeer>(&state, &caller, &headers, &name).await
}

/// A configured peer's status, also when the speaker has none for it (BGP off, or not applied yet).
fn status_of(state: &AppState, peer: &BgpPeer) -> PeerStatus {
    state.bgp.peer(&peer.name).unwrap_or_else(|| {
        let off = state.control.current().config.settings.bgp.is_none();
        PeerStatus {
            name: peer.name.clone(),
            address: peer.address.clone(),
            asn: peer.asn,
            state: if peer.enabled { SessionState::Idle } else { SessionState::Disabled },
            last_error: off.then(|| "BGP is off: settings.bgp is not set".to_string()),
            ..PeerStatus::default()
        }
    })
}

fn configured_peer(state: &AppState, name: &str) -> ApiResult<BgpPeer> {
    state
        .control
        .current()
        .config
        .bgp_peers
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("bgp_peer '{name}'")))
}

/// The session with a peer: state and since when, uptime, flaps, the last error and NOTIFICATIONs sent and
/// received, the negotiated capabilities, and prefix and message counts.
#[utoipa::path(get, path = "/bgp/peers/{name}/status", tag = "bgp", params(("name" = String, Path)),
    responses((status = 200, body = PeerStatus), (status = 404, body = Problem)))]
async fn peer_status(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<PeerStatus>> {
    let peer = configured_peer(&state, &name)?;
    Ok(axum::Json(status_of(&state, &peer)))
}

/// One page of the routes a peer announces to the appliance (its Adj-RIB-In), by prefix. They are kept and
/// shown, never installed.
#[utoipa::path(get, path = "/bgp/peers/{name}/routes", tag = "bgp", params(("name" = String, Path), ListParams),
    responses((status = 200, body = Page<ReceivedRoute>), (status = 404, body = Problem)))]
async fn peer_routes(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<ReceivedRoute>>> {
    configured_peer(&state, &name)?;
    let mut routes = state.bgp.received_routes(&name).unwrap_or_default();
    routes.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    paginate(&routes, |r: &ReceivedRoute| r.prefix.as_str(), &p).map(axum::Json)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<PeerStatus>,
}

/// Every configured peer's session at once (the same as each `/bgp/peers/{name}/status`).
#[utoipa::path(get, path = "/bgp/sessions", tag = "bgp", responses((status = 200, body = SessionList)))]
async fn sessions(State(state): State<AppState>, _caller: Caller) -> axum::Json<SessionList> {
    let peers = state.control.current().config.bgp_peers.clone();
    axum::Json(SessionList { items: peers.iter().map(|p| status_of(&state, p)).collect() })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnnouncementList {
    pub items: Vec<Announcement>,
}

/// What the appliance announces: each prefix (a VIP's /32 or /128, or an aggregate), the VIPs and services it
/// carries, and the peers it is sent to.
#[utoipa::path(get, path = "/bgp/announcements", tag = "bgp", responses((status = 200, body = AnnouncementList)))]
async fn announcements(State(state): State<AppState>, _caller: Caller) -> axum::Json<AnnouncementList> {
    let mut items = state.bgp.announcements();
    items.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    axum::Json(AnnouncementList { items })
}
