//! Pools, services, settings and allocations: list, create, get, replace (with ETags) and delete.

use super::{ListParams, Page, change_meta, paginate};
use crate::auth::Caller;
use crate::extract::{Body, Query};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{AppState, etag, if_match, json_response, with_header};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use control::changes::ChangeOptions;
use control::{ChangeError, ChangeOutcome, Precondition};
use model::config::{Cluster, Config, GlobalService, Kind, Pool, SETTINGS_NAME, Service, Settings};
use model::ipam::Allocation;
use model::validation::{FieldError, ValidationErrors};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use store::Role;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(get_pool, put_pool, delete_pool))
        .routes(routes!(list_services, create_service))
        .routes(routes!(get_service, put_service, delete_service))
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, put_cluster, delete_cluster))
        .routes(routes!(test_cluster))
        .routes(routes!(cluster_status))
        .routes(routes!(list_global_services, create_global_service))
        .routes(routes!(get_global_service, put_global_service, delete_global_service))
        .routes(routes!(get_settings, put_settings, reset_settings))
        .routes(routes!(list_allocations))
}

/// A named, listed kind of configuration object.
pub(super) trait Object: Serialize + DeserializeOwned + Clone + PartialEq + Send + 'static {
    const KIND: Kind;
    const LIST: &'static str;
    const PATH: &'static str;
    fn name(&self) -> &str;
    fn list(config: &Config) -> &Vec<Self>;
    fn list_mut(config: &mut Config) -> &mut Vec<Self>;
    /// The object as responses show it (without credentials).
    fn for_output(&self) -> Self {
        self.clone()
    }
    /// Fills in what the stored version has and a write may leave out (write-only credentials).
    fn carry_from(&mut self, _old: &Self) {}
}

impl Object for Cluster {
    const KIND: Kind = Kind::Cluster;
    const LIST: &'static str = "clusters";
    const PATH: &'static str = "/api/v1/clusters";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.clusters
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.clusters
    }
    fn for_output(&self) -> Self {
        self.redacted()
    }
    fn carry_from(&mut self, old: &Self) {
        model::cluster::carry_credentials(std::slice::from_ref(old), std::slice::from_mut(self));
    }
}

impl Object for GlobalService {
    const KIND: Kind = Kind::GlobalService;
    const LIST: &'static str = "global_services";
    const PATH: &'static str = "/api/v1/global_services";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.global_services
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.global_services
    }
}

impl Object for Pool {
    const KIND: Kind = Kind::Pool;
    const LIST: &'static str = "pools";
    const PATH: &'static str = "/api/v1/pools";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.pools
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.pools
    }
}

impl Object for Service {
    const KIND: Kind = Kind::Service;
    const LIST: &'static str = "services";
    const PATH: &'static str = "/api/v1/services";
    fn name(&self) -> &str {
        &self.name
    }
    fn list(config: &Config) -> &Vec<Self> {
        &config.services
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.services
    }
}

/// Turns `pools[3].addresses[0]` into `addresses[0]` when pools[3] is the object being written, so that
/// errors name fields of the request body. Errors about other objects keep their full path.
fn relative_errors(error: ChangeError, list: &str, index: Option<usize>) -> ApiError {
    let Some(index) = index else { return error.into() };
    let prefix = format!("{list}[{index}]");
    let strip = |errors: ValidationErrors| {
        ValidationErrors(
            errors
                .0
                .into_iter()
                .map(|e| match e.field.strip_prefix(&prefix) {
                    Some(rest) => FieldError { field: rest.trim_start_matches('.').to_string(), message: e.message },
                    None => e,
                })
                .collect(),
        )
    };
    match error {
        ChangeError::Invalid(errors) => ChangeError::Invalid(strip(errors)).into(),
        ChangeError::InUse(errors) => ChangeError::InUse(strip(errors)).into(),
        other => other.into(),
    }
}

/// Where `name` stands in the list as the change writes it (errors name that place): where it is now, or at the
/// end for a new object.
fn index_in_change<T: Object>(config: &Config, name: &str) -> usize {
    let list = T::list(config);
    list.iter().position(|o| o.name() == name).unwrap_or(list.len())
}

fn options(headers: &HeaderMap, kind: Kind, name: &str) -> ApiResult<ChangeOptions> {
    let precondition = if_match(headers)?.map(|version| Precondition { kind, name: name.to_string(), version });
    Ok(ChangeOptions { precondition, ..ChangeOptions::default() })
}

fn written<T: Serialize>(status: StatusCode, body: &T, version: Option<u64>, outcome: &ChangeOutcome) -> Response {
    let mut response = json_response(status, body);
    if let Some(v) = version {
        response = with_header(response, "etag", etag(v));
    }
    if let Some(r) = &outcome.revision
        && let Ok(v) = HeaderValue::from_str(&r.number.to_string())
    {
        response = with_header(response, "x-portico-revision", v);
    }
    response
}

pub(super) async fn list_objects<T: Object>(state: &AppState, params: &ListParams) -> ApiResult<Page<T>> {
    let current = state.control.current();
    let mut page = paginate(T::list(&current.config), |o: &T| o.name(), params)?;
    page.items = page.items.iter().map(T::for_output).collect();
    Ok(page)
}

pub(super) async fn get_object<T: Object>(state: &AppState, name: &str) -> ApiResult<Response> {
    let current = state.control.current();
    let object = T::list(&current.config)
        .iter()
        .find(|o| o.name() == name)
        .ok_or_else(|| ApiError::not_found(format!("{} '{name}'", T::KIND)))?;
    let mut response = json_response(StatusCode::OK, &object.for_output());
    if let Some(v) = current.version_of(T::KIND, name) {
        response = with_header(response, "etag", etag(v));
    }
    Ok(response)
}

pub(super) async fn create_object<T: Object>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    object: T,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let name = object.name().to_string();
    let index = Some(index_in_change::<T>(&state.control.current().config, &name));
    let meta = change_meta(caller.actor(), headers, format!("create {} '{name}'", T::KIND));
    let outcome = state
        .control
        .change(meta, ChangeOptions::default(), |config| {
            if T::list(config).iter().any(|o| o.name() == name) {
                return Err(ChangeError::Exists(format!("{} '{name}'", T::KIND)));
            }
            T::list_mut(config).push(object.clone());
            Ok(())
        })
        .await
        .map_err(|e| relative_errors(e, T::LIST, index))?;
    let version = outcome.current.version_of(T::KIND, &name);
    let mut response = written(StatusCode::CREATED, &object.for_output(), version, &outcome);
    if let Ok(location) = HeaderValue::from_str(&format!("{}/{name}", T::PATH)) {
        response = with_header(response, "location", location);
    }
    Ok(response)
}

pub(super) async fn put_object<T: Object>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    name: &str,
    object: T,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    if object.name() != name {
        return Err(ApiError::invalid_field(
            "name",
            format!("must equal the name in the path ('{name}'); rename by create and delete"),
        ));
    }
    let current = state.control.current();
    let exists = T::list(&current.config).iter().any(|o| o.name() == name);
    let index = Some(index_in_change::<T>(&current.config, name));
    let verb = if exists { "replace" } else { "create" };
    let meta = change_meta(caller.actor(), headers, format!("{verb} {} '{name}'", T::KIND));
    let opts = options(headers, T::KIND, name)?;
    let outcome = state
        .control
        .change(meta, opts, |config| {
            let list = T::list_mut(config);
            match list.iter_mut().find(|o| o.name() == name) {
                Some(slot) => {
                    let mut object = object.clone();
                    object.carry_from(slot);
                    *slot = object;
                }
                None => list.push(object.clone()),
            }
            Ok(())
        })
        .await
        .map_err(|e| relative_errors(e, T::LIST, index))?;
    let version = outcome.current.version_of(T::KIND, name);
    let status = if exists { StatusCode::OK } else { StatusCode::CREATED };
    Ok(written(status, &object.for_output(), version, &outcome))
}

pub(super) async fn delete_object<T: Object>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    name: &str,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let meta = change_meta(caller.actor(), headers, format!("delete {} '{name}'", T::KIND));
    let opts = options(headers, T::KIND, name)?;
    let outcome = state
        .control
        .change(meta, opts, |config| {
            let list = T::list_mut(config);
            let before = list.len();
            list.retain(|o| o.name() != name);
            if list.len() == before {
                return Err(ChangeError::NotFound(format!("{} '{name}'", T::KIND)));
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            // What is left would refer to the deleted object: that is a conflict with other objects, not
            // bad input.
            ChangeError::Invalid(errors) => ApiError::new(
                StatusCode::CONFLICT,
                "in-use",
                "Other objects refer to it",
                format!("{} '{name}' is still referred to; change those first", T::KIND),
            )
            .with_errors(errors.0),
            other => other.into(),
        })?;
    Ok(written(StatusCode::NO_CONTENT, &(), None, &outcome).into_response().map(|_| axum::body::Body::empty()))
}

/// List pools.
#[utoipa::path(get, path = "/pools", tag = "pools", params(ListParams), responses((status = 200, body = Page<Pool>)))]
async fn list_pools(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Pool>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Create a pool.
#[utoipa::path(post, path = "/pools", tag = "pools", request_body = Pool,
    responses((status = 201, body = Pool, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_pool(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(pool): Body<Pool>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, pool).await
}

/// Get a pool; its ETag is the revision that last changed it.
#[utoipa::path(get, path = "/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = Pool, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_pool(State(state): State<AppState>, _caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    get_object::<Pool>(&state, &name).await
}

/// Replace (or create) a pool. With `If-Match`, only if it is still at that version (else 412).
#[utoipa::path(put, path = "/pools/{name}", tag = "pools", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = Pool,
    responses((status = 200, body = Pool), (status = 201, body = Pool), (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_pool(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(pool): Body<Pool>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, pool).await
}

/// Delete a pool. Refused (409) while it holds allocations.
#[utoipa::path(delete, path = "/pools/{name}", tag = "pools", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem)))]
async fn delete_pool(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<Pool>(&state, &caller, &headers, &name).await
}

/// List static services.
#[utoipa::path(get, path = "/services", tag = "services", params(ListParams), responses((status = 200, body = Page<Service>)))]
async fn list_services(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Service>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Create a static service; its VIP is allocated at once (see /allocations).
#[utoipa::path(post, path = "/services", tag = "services", request_body = Service,
    responses((status = 201, body = Service, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(service): Body<Service>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, service).await
}

/// Get a static service.
#[utoipa::path(get, path = "/services/{name}", tag = "services", params(("name" = String, Path)),
    responses((status = 200, body = Service, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_service(State(state): State<AppState>, _caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    get_object::<Service>(&state, &name).await
}

/// Replace (or create) a static service.
#[utoipa::path(put, path = "/services/{name}", tag = "services", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = Service,
    responses((status = 200, body = Service), (status = 201, body = Service), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(service): Body<Service>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, service).await
}

/// Delete a static service; its VIPs are released.
#[utoipa::path(delete, path = "/services/{name}", tag = "services", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<Service>(&state, &caller, &headers, &name).await
}

/// List connected clusters (credentials are never shown).
#[utoipa::path(get, path = "/clusters", tag = "clusters", params(ListParams), responses((status = 200, body = Page<Cluster>)))]
async fn list_clusters(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Cluster>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Connect a cluster: a `kubeconfig` (token or client certificate, no plugins), or `server` + `ca` + `token`.
/// Credentials are sealed at rest and never shown again.
#[utoipa::path(post, path = "/clusters", tag = "clusters", request_body = Cluster,
    responses((status = 201, body = Cluster, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_cluster(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(cluster): Body<Cluster>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, cluster).await
}

/// Get a cluster (without credentials).
#[utoipa::path(get, path = "/clusters/{name}", tag = "clusters", params(("name" = String, Path)),
    responses((status = 200, body = Cluster, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_cluster(State(state): State<AppState>, _caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    get_object::<Cluster>(&state, &name).await
}

/// Replace (or create) a cluster. Credentials left out are kept; give `kubeconfig` or `token` to replace them.
#[utoipa::path(put, path = "/clusters/{name}", tag = "clusters", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = Cluster,
    responses((status = 200, body = Cluster), (status = 201, body = Cluster), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_cluster(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(cluster): Body<Cluster>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, cluster).await
}

/// Disconnect a cluster: its watchers stop and its allocations are released.
#[utoipa::path(delete, path = "/clusters/{name}", tag = "clusters", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem)))]
async fn delete_cluster(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<Cluster>(&state, &caller, &headers, &name).await
}

/// Reach the cluster's API server with its stored credentials: its version, and every permission the appliance
/// needs (checked with SelfSubjectAccessReview), listing what is missing.
#[utoipa::path(post, path = "/clusters/{name}/test", tag = "clusters", params(("name" = String, Path)),
    responses((status = 200, body = model::cluster::ClusterTest), (status = 404, body = Problem)))]
async fn test_cluster(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let cluster = state
        .control
        .current()
        .config
        .clusters
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("cluster '{name}'")))?;
    let report = state.clusters.test(cluster).await;
    Ok(json_response(StatusCode::OK, &report))
}

/// Whether the cluster is connected (and since when), its last complete sync, object counts, and the last
/// error of each watched kind.
#[utoipa::path(get, path = "/clusters/{name}/status", tag = "clusters", params(("name" = String, Path)),
    responses((status = 200, body = model::cluster::ClusterStatus), (status = 404, body = Problem)))]
async fn cluster_status(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let current = state.control.current();
    let cluster = current
        .config
        .clusters
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::not_found(format!("cluster '{name}'")))?;
    let status = state.clusters.status(&name).unwrap_or_else(|| model::cluster::ClusterStatus {
        name: name.clone(),
        enabled: cluster.enabled,
        ..Default::default()
    });
    Ok(json_response(StatusCode::OK, &status))
}

/// List global services (one VIP in front of Services of several clusters).
#[utoipa::path(get, path = "/global_services", tag = "clusters", params(ListParams),
    responses((status = 200, body = Page<GlobalService>)))]
async fn list_global_services(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<GlobalService>>> {
    list_objects(&state, &p).await.map(axum::Json)
}

/// Create a global service.
#[utoipa::path(post, path = "/global_services", tag = "clusters", request_body = GlobalService,
    responses((status = 201, body = GlobalService, headers(("etag" = String))), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_global_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(service): Body<GlobalService>,
) -> ApiResult<Response> {
    create_object(&state, &caller, &headers, service).await
}

/// Get a global service.
#[utoipa::path(get, path = "/global_services/{name}", tag = "clusters", params(("name" = String, Path)),
    responses((status = 200, body = GlobalService, headers(("etag" = String))), (status = 404, body = Problem)))]
async fn get_global_service(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    get_object::<GlobalService>(&state, &name).await
}

/// Replace (or create) a global service.
#[utoipa::path(put, path = "/global_services/{name}", tag = "clusters", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = GlobalService,
    responses((status = 200, body = GlobalService), (status = 201, body = GlobalService), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_global_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(service): Body<GlobalService>,
) -> ApiResult<Response> {
    put_object(&state, &caller, &headers, &name, service).await
}

/// Delete a global service; its VIP is released and its members get VIPs of their own again.
#[utoipa::path(delete, path = "/global_services/{name}", tag = "clusters", params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_global_service(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    delete_object::<GlobalService>(&state, &caller, &headers, &name).await
}

/// Get the appliance settings.
#[utoipa::path(get, path = "/settings", tag = "settings", responses((status = 200, body = Settings, headers(("etag" = String)))))]
async fn get_settings(State(state): State<AppState>, _caller: Caller) -> Response {
    let current = state.control.current();
    let mut response = json_response(StatusCode::OK, &current.config.settings);
    if let Some(v) = current.version_of(Kind::Settings, SETTINGS_NAME) {
        response = with_header(response, "etag", etag(v));
    }
    response
}

/// Replace the appliance settings (a singleton: there is nothing to create or list).
#[utoipa::path(put, path = "/settings", tag = "settings", params(("If-Match" = Option<String>, Header)), request_body = Settings,
    responses((status = 200, body = Settings), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(settings): Body<Settings>,
) -> ApiResult<Response> {
    write_settings(&state, &caller, &headers, settings, "change settings").await
}

/// Reset the settings to their defaults.
#[utoipa::path(delete, path = "/settings", tag = "settings", params(("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Settings), (status = 412, body = Problem)))]
async fn reset_settings(State(state): State<AppState>, caller: Caller, headers: HeaderMap) -> ApiResult<Response> {
    write_settings(&state, &caller, &headers, Settings::default(), "reset settings to defaults").await
}

async fn write_settings(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    settings: Settings,
    message: &str,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let meta = change_meta(caller.actor(), headers, message.to_string());
    let opts = options(headers, Kind::Settings, SETTINGS_NAME)?;
    let outcome = state
        .control
        .change(meta, opts, |config| {
            config.settings = settings.clone();
            Ok(())
        })
        .await
        .map_err(|e| relative_errors(e, "settings", None))
        .map_err(strip_settings_prefix)?;
    let version = outcome.current.version_of(Kind::Settings, SETTINGS_NAME);
    Ok(written(StatusCode::OK, &outcome.current.config.settings, version, &outcome))
}

fn strip_settings_prefix(mut e: ApiError) -> ApiError {
    for err in &mut e.problem.errors {
        if let Some(rest) = err.field.strip_prefix("settings.") {
            err.field = rest.to_string();
        }
    }
    e
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllocationParams {
    pub pool: Option<String>,
    /// e.g. `service/web`
    pub owner: Option<String>,
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (an address).
    pub cursor: Option<String>,
}

/// List VIP allocations, in address order.
#[utoipa::path(get, path = "/allocations", tag = "allocations", params(AllocationParams),
    responses((status = 200, body = Page<Allocation>)))]
async fn list_allocations(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<AllocationParams>,
) -> ApiResult<axum::Json<Page<Allocation>>> {
    let current = state.control.current();
    let limit = super::page_limit(p.limit)?;
    let after = match &p.cursor {
        None => None,
        Some(c) => Some(c.parse::<std::net::IpAddr>().map_err(|_| {
            ApiError::bad_request(
                "cursor is not valid",
                vec![FieldError { field: "cursor".into(), message: "must be an address".into() }],
            )
        })?),
    };
    let mut items = Vec::new();
    let mut next_cursor = None;
    let matching = current.allocations.iter().filter(|a| {
        p.pool.as_ref().is_none_or(|x| *x == a.pool)
            && p.owner.as_ref().is_none_or(|x| *x == a.owner)
            && after.is_none_or(|c| a.address > c)
    });
    for a in matching {
        if items.len() == limit {
            next_cursor = items.last().map(|l: &Allocation| l.address.to_string());
            break;
        }
        items.push(a.clone());
    }
    Ok(axum::Json(Page { items, next_cursor }))
}
