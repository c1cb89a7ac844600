//! Portico's REST API (axum): `/api/v1`, JSON (YAML for whole documents), RFC 9457 errors, sessions and
//! tokens with roles, ETags, audit of every change, OpenAPI 3.1 generated from the handlers.

pub mod auth;
pub mod extract;
pub mod problem;
mod routes;
pub mod server;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use control::{Control, StatusRegistry};
use problem::ApiError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use auth::{hash_password, password_problem, random_secret};

/// Bodies of ordinary requests; whole-document routes allow more (see `DOCUMENT_BODY_LIMIT`).
pub const BODY_LIMIT: usize = 1024 * 1024;
pub const DOCUMENT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// What the API needs of cluster sync (implemented by the binary over the cluster crate, so this crate does
/// not depend on a Kubernetes client).
pub trait ClusterOps: Send + Sync + 'static {
    /// The live status of a cluster, if it is being synced.
    fn status(&self, name: &str) -> Option<model::cluster::ClusterStatus>;
    /// Reaches the API server with these credentials and checks every permission needed.
    fn test(
        &self,
        cluster: model::config::Cluster,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::cluster::ClusterTest> + Send>>;
}

/// What the API needs of the BGP speaker (implemented by the binary over the bgp crate).
pub trait BgpOps: Send + Sync + 'static {
    fn peer(&self, name: &str) -> Option<model::bgp::PeerStatus>;
    fn received_routes(&self, name: &str) -> Option<Vec<model::bgp::ReceivedRoute>>;
    fn announcements(&self) -> Vec<model::bgp::Announcement>;
}

/// What the API needs of the L2 responder (implemented by the binary over the l2 crate).
pub trait L2Ops: Send + Sync + 'static {
    fn status(&self) -> Vec<model::l2::L2InterfaceStatus>;
}

/// What the API needs of the L4 proxy (implemented by the binary over the proxy crate).
pub trait ProxyOps: Send + Sync + 'static {
    fn status(&self) -> model::proxy::ProxyStatus;
}

/// The running parts of the appliance the API reports on.
pub struct Subsystems {
    pub clusters: Arc<dyn ClusterOps>,
    pub bgp: Arc<dyn BgpOps>,
    pub l2: Arc<dyn L2Ops>,
    pub proxy: Arc<dyn ProxyOps>,
}

/// Everything a handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub control: Control,
    pub status: StatusRegistry,
    pub throttle: auth::LoginThrottle,
    /// Renders the Prometheus exposition of every metric.
    pub render_metrics: Box<dyn Fn() -> String + Send + Sync>,
    pub started: Instant,
    pub version: &'static str,
    pub clusters: Arc<dyn ClusterOps>,
    pub bgp: Arc<dyn BgpOps>,
    pub l2: Arc<dyn L2Ops>,
    pub proxy: Arc<dyn ProxyOps>,
    token_touches: Mutex<HashMap<String, Instant>>,
}

impl Deref for AppState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        control: Control,
        status: StatusRegistry,
        render_metrics: Box<dyn Fn() -> String + Send + Sync>,
        version: &'static str,
        subsystems: Subsystems,
    ) -> AppState {
        let Subsystems { clusters, bgp, l2, proxy } = subsystems;
        AppState(Arc::new(StateInner {
            control,
            status,
            throttle: auth::LoginThrottle::default(),
            render_metrics,
            started: Instant::now(),
            version,
            clusters,
            bgp,
            l2,
            proxy,
            token_touches: Mutex::new(HashMap::new()),
        }))
    }

    /// Records a token's last use at most once a minute, so that token traffic does not turn into writes.
    async fn note_token_use(&self, id: &str) {
        let due = match self.token_touches.lock() {
            Ok(mut map) => {
                let now = Instant::now();
                let due = map.get(id).is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60));
                if due {
                    map.insert(id.to_string(), now);
                }
                due
            }
            Err(_) => false,
        };
        if due && let Err(e) = self.control.store().touch_token(id).await {
            tracing::warn!(error = %e, "could not record token use");
        }
    }
}

/// Whether a connection came in over TLS (set by the server per connection; decides the cookie's `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct Tls(pub bool);

/// The client's address (set by the server per connection).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portico",
        description = "REST API of the Portico Kubernetes edge appliance. Errors are RFC 9457 problem documents.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "auth", description = "Log in and out, sessions, own password"),
        (name = "users", description = "Users and roles (admin only)"),
        (name = "tokens", description = "API tokens for automation"),
        (name = "pools", description = "Address pools that VIPs are allocated from"),
        (name = "services", description = "Static services (VIPs in front of non-Kubernetes backends)"),
        (name = "settings", description = "Appliance-wide settings"),
        (name = "clusters", description = "Connected Kubernetes clusters and global (multi-cluster) services"),
        (name = "bgp", description = "BGP neighbours, their sessions, received routes and announced VIPs"),
        (name = "l2", description = "ARP/NDP announcement of VIPs on local segments"),
        (name = "proxy", description = "The L4 proxy: engine, listeners and backends"),
        (name = "allocations", description = "VIP allocations (read-only)"),
        (name = "config", description = "The whole configuration: history, rollback, apply, commit-confirm"),
        (name = "system", description = "Status, health, metrics and audit"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("ptk_<id>.<secret>").build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                auth::SESSION_COOKIE,
                "Session cookie from POST /api/v1/auth/login; changes also need an X-Requested-With header",
            ))),
        );
    }
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", routes::v1()).merge(routes::system::unversioned())
}

/// The OpenAPI document, generated from the handlers (the same one `/api/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The API's router and its OpenAPI document.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (api, mut openapi) = api_routes().split_for_parts();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
    routes::system::publish_openapi(&openapi);
    let request_id = HeaderName::from_static("x-request-id");
    let router = api
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), audit_and_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state);
    (router, openapi)
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "No such endpoint",
        format!("{method} {} is not an endpoint", uri.path()),
    )
}

/// Per request: a tracing span with the request ID, HTTP metrics, and an audit entry for every change and
/// every login attempt.
async fn audit_and_metrics(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("")
        .to_string();
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0.ip().to_string()).unwrap_or_default();
    let actor = auth::AuditActor::default();
    request.extensions_mut().insert(actor.clone());
    let login_user = Arc::new(Mutex::new(None::<String>));
    request.extensions_mut().insert(routes::auth::LoginAttempt(login_user.clone()));

    let span = tracing::info_span!("request", id = %request_id, method = %method, path = %path);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status();
    let elapsed = started.elapsed();
    metrics::counter!("portico_http_requests_total", "method" => method.to_string(), "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!("portico_http_request_duration_seconds", "method" => method.to_string(), "route" => route.clone()).record(elapsed.as_secs_f64());
    tracing::debug!(parent: &span, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request done");

    let is_login = route == "/api/v1/auth/login";
    if auth::is_mutation(&method) || is_login {
        let attempted = login_user.lock().ok().and_then(|u| u.clone());
        let actor_name = actor.get().or(attempted).unwrap_or_else(|| "anonymous".into());
        let outcome = if status.is_success() {
            "success"
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            "denied"
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            "throttled"
        } else {
            "failure"
        };
        let entry = store::NewAuditEntry {
            actor: actor_name,
            client,
            method: method.to_string(),
            path,
            status: status.as_u16(),
            outcome: outcome.into(),
            request_id,
            detail: response
                .headers()
                .get("x-portico-revision")
                .and_then(|v| v.to_str().ok())
                .map(|r| format!("revision {r}"))
                .unwrap_or_default(),
        };
        if let Err(e) = state.control.store().append_audit(&entry).await {
            tracing::error!(error = %e, "audit entry could not be written");
        }
    }
    response
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `If-Match: "12"` → 12. `None` without the header.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"').parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "If-Match must be an ETag this API returned, like \"12\"",
            vec![model::FieldError {
                field: "If-Match".into(),
                message: format!("'{text}' is not an ETag of this API"),
            }],
        )
    })
}

pub(crate) fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

pub(crate) fn with_header(mut response: Response, name: &'static str, value: HeaderValue) -> Response {
    response.headers_mut().insert(HeaderName::from_static(name), value);
    response
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the committed copy of the generated document; regenerate it with
    /// `UPDATE_OPENAPI=1 cargo test -p portico-api openapi_document_is_current`.
    #[test]
    fn openapi_document_is_current() {
        let generated = super::openapi().to_pretty_json().unwrap() + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is out of date; run UPDATE_OPENAPI=1 cargo test -p portico-api openapi_document_is_current"
        );
        assert!(generated.contains("\"openapi\": \"3.1"));
    }

    #[test]
    fn example_configuration_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/example.yaml");
        let text = std::fs::read(path).unwrap();
        let config: model::Config = crate::extract::parse_body(&text, true).unwrap();
        config.validate().unwrap();
        let requests = model::ipam::static_requests(&config);
        model::ipam::plan(&config.pools, &requests, &[]).unwrap();
    }
}
