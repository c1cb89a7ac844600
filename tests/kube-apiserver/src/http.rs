//! The HTTP side: routing of Kubernetes API paths, authentication and authorization, the handlers, watch
//! streams, fault injection and the TLS listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{Attributes, Tokens};
use crate::discovery;
use crate::kinds::{self, Kind};
use crate::ops::{self, ListRequest, PatchType, Settings, WriteCtx};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, FieldError};
use crate::store::{Broadcast, ChangeType, Store};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The user the token belongs to, if any.
    pub user: Option<String>,
    /// The HTTP status answered.
    pub code: u16,
}

impl RequestRecord {
    /// The value of one query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        parse_query(&self.query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ErrorFault {
    pub remaining: usize,
    pub path_contains: Option<String>,
    pub code: u16,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub errors: Vec<ErrorFault>,
    pub stall_until: Option<Instant>,
    pub delay: Option<Duration>,
}

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub tokens: Mutex<Tokens>,
    pub faults: Mutex<Faults>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub settings: Settings,
    pub bookmark_interval: Duration,
    /// Bumped to end every open watch.
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    pub url: String,
    /// Watch streams currently open, by path.
    pub open_watches: Mutex<HashMap<String, usize>>,
}

/// Counts a watch stream as open for as long as it lives.
struct OpenWatch {
    shared: Arc<Shared>,
    path: String,
}

impl OpenWatch {
    fn new(shared: Arc<Shared>, path: String) -> Self {
        *lock(&shared.open_watches).entry(path.clone()).or_insert(0) += 1;
        OpenWatch { shared, path }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut m = lock(&self.shared.open_watches);
        if let Some(n) = m.get_mut(&self.path) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.path);
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true" | "1" | "True" | "TRUE") => Ok(Some(true)),
            Some("" | "false" | "0" | "False" | "FALSE") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "failed to parse query parameter {name}: strconv.ParseBool: parsing {other:?}: invalid syntax"
            ))),
        }
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.status());
    if let Some(s) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// What a path names.
enum Route {
    Version,
    Health,
    Api,
    Apis,
    ApiGroup(String),
    ResourceList(String, String),
    Resource(Target),
    NotFound,
}

struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_path: bool,
}

fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path.trim_end_matches('/').split('/').skip(1).map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Route::Health),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::ApiGroup((*g).to_string())),
        ["api", "v1"] => return Ok(Route::ResourceList(String::new(), "v1".to_string())),
        ["apis", g, v] => return Ok(Route::ResourceList((*g).to_string(), (*v).to_string())),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(Route::NotFound),
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, more @ ..] if kinds::find(group, version, r).is_some_and(|k| k.namespaced) => {
            (Some((*ns).to_string()), [&[*r][..], more].concat())
        }
        r => (None, r.to_vec()),
    };
    let (resource, name, sub) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        _ => return Err(ApiError::not_found_path()),
    };
    let Some(kind) = kinds::find(group, version, resource) else { return Err(ApiError::not_found_path()) };
    if kind.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::not_found_path());
    }
    if let Some(s) = sub
        && !(s == "status" && kind.status)
    {
        return Err(ApiError::not_found_path());
    }
    if let Some(n) = name
        && let Some(why) = crate::validate::path_segment_error(n)
    {
        return Err(ApiError::bad_request(format!("name {n:?}: {why}")));
    }
    Ok(Route::Resource(Target {
        kind,
        namespace,
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
        watch_path,
    }))
}

/// The field manager of a write: `fieldManager`, or the User-Agent's first word as the real server derives it.
fn field_manager(q: &Query, headers: &http::HeaderMap, is_apply: bool) -> Result<String, ApiError> {
    if let Some(m) = q.get("fieldManager") {
        if m.len() > 128 {
            return Err(ApiError::invalid_group_kind(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![FieldError::too_long("fieldManager", 128)],
            ));
        }
        return Ok(m.to_string());
    }
    if is_apply {
        return Ok(String::new());
    }
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    Ok(ua.split('/').next().unwrap_or("unknown").to_string())
}

fn accept_metadata(headers: &http::HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

fn to_partial(kind: &Kind, obj: &Value) -> Value {
    let _ = kind;
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"].clone()})
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let user = token.as_ref().and_then(|t| lock(&shared.tokens).user(t).map(|e| e.user.clone()));

    // Faults first: stalls, then injected errors.
    let (wait, injected) = {
        let mut f = lock(&shared.faults);
        let mut wait = f.delay.unwrap_or_default();
        if let Some(until) = f.stall_until {
            let now = Instant::now();
            if until > now {
                wait += until - now;
            } else {
                f.stall_until = None;
            }
        }
        let mut injected = None;
        if let Some(pos) =
            f.errors.iter().position(|e| e.path_contains.as_ref().is_none_or(|p| path.contains(p.as_str())))
        {
            let e = &mut f.errors[pos];
            injected = Some(e.code);
            e.remaining = e.remaining.saturating_sub(1);
            if e.remaining == 0 {
                f.errors.remove(pos);
            }
        }
        (wait, injected)
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let resp = if let Some(code) = injected {
        let e = match code {
            500 => ApiError::internal("injected fault"),
            503 => ApiError::new(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
            429 => {
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later",
                );
                e.retry_after = Some(1);
                e
            }
            c => ApiError::new(c, "InternalError", "injected fault"),
        };
        error_response(&e)
    } else {
        match dispatch(&shared, req, token.as_deref()).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    };
    lock(&shared.requests).push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        user,
        code: resp.status().as_u16(),
    });
    resp
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
    token: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let route = route(&path)?;
    if matches!(route, Route::Version | Route::Health) {
        return Ok(match route {
            Route::Version => json_response(200, &discovery::version()),
            _ => {
                let mut r = Response::new(Body::from("ok"));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                r
            }
        });
    }
    let entry = token.and_then(|t| lock(&shared.tokens).user(t).cloned()).ok_or_else(ApiError::unauthorized)?;
    match route {
        Route::Api => {
            return Ok(json_response(200, &discovery::api_versions(shared.url.trim_start_matches("https://"))));
        }
        Route::Apis => return Ok(json_response(200, &discovery::api_group_list())),
        Route::ApiGroup(g) => {
            return discovery::api_group(&g).map(|v| json_response(200, &v)).ok_or_else(ApiError::not_found_path);
        }
        Route::ResourceList(g, v) => {
            return discovery::resource_list(&g, &v)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::not_found_path);
        }
        Route::NotFound => {
            let mut r = Response::new(Body::from("404 page not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            return Ok(r);
        }
        _ => {}
    }
    let Route::Resource(target) = route else { return Err(ApiError::not_found_path()) };
    let q = Query(parse_query(req.uri().query().unwrap_or_default()));
    let method = req.method().clone();
    let watch = target.watch_path || q.flag("watch")?.unwrap_or(false);
    let kind = target.kind;
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let subresource_verb = target.subresource.is_some() && matches!(verb, "get" | "update" | "patch");
    if !kind.verbs.contains(&verb) && !subresource_verb {
        return Err(ApiError::method_not_allowed());
    }
    let attrs = Attributes {
        verb: verb.to_string(),
        api_group: kind.group.to_string(),
        resource: kind.plural.to_string(),
        subresource: target.subresource.clone(),
        namespace: if kind.plural == "namespaces" { target.name.clone() } else { target.namespace.clone() },
        name: target.name.clone(),
    };
    // SelfSubjectAccessReviews are open to every authenticated user (system:basic-user).
    if kind.plural != "selfsubjectaccessreviews" && !Tokens::authorize(&entry, &attrs) {
        return Err(ApiError::new(403, "Forbidden", attrs.forbidden_message(&entry.user))
            .with_details(attrs.forbidden_details()));
    }
    let headers = req.headers().clone();
    let metadata_only = accept_metadata(&headers);
    let dry_run = match q.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid dry run value: {other:?}, supported: [\"All\"]")));
        }
    };
    if verb == "watch" {
        return serve_watch(shared, kind, &target, &q, metadata_only, &path).await;
    }
    if verb == "list" {
        return list(shared, kind, &target, &q, metadata_only).await;
    }
    let body = req.into_body().collect().await.map_err(|e| ApiError::bad_request(e.to_string()))?.to_bytes();
    let render = |code: u16, obj: &Value| {
        let view = ops::to_view(kind, obj);
        json_response(code, &if metadata_only { to_partial(kind, &view) } else { view })
    };
    let ns = target.namespace.as_deref();
    match verb {
        "get" => {
            let name = target.name.as_deref().unwrap_or_default();
            if let Some(rv) = q.get("resourceVersion").filter(|s| !s.is_empty() && *s != "0") {
                let n: u64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
                wait_for_rv(shared, n).await?;
            }
            let store = lock(&shared.store);
            let obj = store.get(&ops::key(kind, ns, name)).ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(render(200, &obj))
        }
        "create" => {
            let body = parse_body(&headers, &body)?;
            if kind.plural == "selfsubjectaccessreviews" {
                return self_subject_access_review(&entry, body).map(|v| json_response(201, &v));
            }
            let ctx = WriteCtx {
                kind,
                namespace: ns,
                subresource: None,
                manager: field_manager(&q, &headers, false)?,
                dry_run,
            };
            let mut store = lock(&shared.store);
            let obj = ops::create(&mut store, &shared.settings, &ctx, body)?;
            Ok(render(201, &obj))
        }
        "update" => {
            let body = parse_body(&headers, &body)?;
            let ctx = WriteCtx {
                kind,
                namespace: ns,
                subresource: target.subresource.as_deref(),
                manager: field_manager(&q, &headers, false)?,
                dry_run,
            };
            let mut store = lock(&shared.store);
            let (code, obj) =
                ops::update(&mut store, &shared.settings, &ctx, target.name.as_deref().unwrap_or_default(), body)?;
            Ok(render(code, &obj))
        }
        "patch" => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let Some(pt) = PatchType::from_content_type(ct) else {
                return Err(ApiError::unsupported_media_type(ct, ops::PATCH_TYPES));
            };
            let force = q.flag("force")?.unwrap_or(false);
            let ctx = WriteCtx {
                kind,
                namespace: ns,
                subresource: target.subresource.as_deref(),
                manager: field_manager(&q, &headers, pt == PatchType::Apply)?,
                dry_run,
            };
            let mut store = lock(&shared.store);
            let (code, obj) = ops::patch(
                &mut store,
                &shared.settings,
                &ctx,
                target.name.as_deref().unwrap_or_default(),
                pt,
                &body,
                force,
            )?;
            Ok(render(code, &obj))
        }
        "delete" => {
            let opts = if body.is_empty() { json!({}) } else { parse_json(&body)? };
            let ctx = WriteCtx { kind, namespace: ns, subresource: None, manager: String::new(), dry_run };
            let mut store = lock(&shared.store);
            let obj = ops::delete(&mut store, &ctx, target.name.as_deref().unwrap_or_default(), &opts)?;
            Ok(render(200, &obj))
        }
        "deletecollection" => {
            let lr = list_request(kind, &target, &q)?;
            let ctx = WriteCtx { kind, namespace: ns, subresource: None, manager: String::new(), dry_run };
            let mut store = lock(&shared.store);
            let result = ops::list(&store, kind, &ListRequest { limit: None, continue_token: None, ..lr })?;
            let mut deleted = Vec::new();
            for o in &result.items {
                let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                let ns = o.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
                let c = WriteCtx { namespace: ns.as_deref(), ..ctx.clone() };
                deleted.push(ops::delete(&mut store, &c, &name, &json!({}))?);
            }
            let result =
                ops::ListResult { items: deleted, resource_version: store.rv, continue_token: None, remaining: None };
            Ok(json_response(200, &ops::list_body(kind, &result)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// A POST or PUT body: JSON, or YAML when the client says so; protobuf is not served.
fn parse_body(headers: &http::HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/json" | "" | "*/*" => parse_json(body),
        "application/yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
        other => Err(ApiError::unsupported_media_type(other, &["application/json", "application/yaml"])),
    }
}

fn self_subject_access_review(entry: &crate::auth::TokenEntry, mut body: Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    ops::check_type(
        kinds::find("authorization.k8s.io", "v1", "selfsubjectaccessreviews").unwrap_or(&kinds::KINDS[0]),
        &body,
    )?;
    let ra = body.pointer("/spec/resourceAttributes").filter(|v| !v.is_null()).cloned();
    let nra = body.pointer("/spec/nonResourceAttributes").filter(|v| !v.is_null()).cloned();
    let allowed = match (ra, nra) {
        (Some(ra), None) => {
            let s = |f: &str| ra.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
            let sub = s("subresource");
            let ns = s("namespace");
            let a = Attributes {
                verb: s("verb"),
                api_group: s("group"),
                resource: s("resource"),
                subresource: (!sub.is_empty()).then_some(sub),
                namespace: (!ns.is_empty()).then_some(ns),
                name: None,
            };
            Tokens::authorize(entry, &a)
        }
        (None, Some(_)) => false,
        _ => {
            return Err(ApiError::invalid_group_kind(
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "",
                vec![FieldError::invalid(
                    "spec.resourceAttributes",
                    Value::Null,
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            ));
        }
    };
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SelfSubjectAccessReview");
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = if allowed {
        json!({"allowed": true, "reason": format!("allowed by the permissions of token user {:?}", entry.user)})
    } else {
        json!({"allowed": false})
    };
    Ok(body)
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn list_request(kind: &Kind, target: &Target, q: &Query) -> Result<ListRequest, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    fields.check_supported(kind.namespaced, kind.fields).map_err(ApiError::bad_request)?;
    let limit = match q.get("limit") {
        None | Some("") => None,
        Some(l) => {
            let n: i64 = l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?;
            (n > 0).then_some(n as usize)
        }
    };
    Ok(ListRequest {
        namespace: target.namespace.clone(),
        labels,
        fields,
        limit,
        continue_token: q.get("continue").filter(|s| !s.is_empty()).map(str::to_string),
        resource_version: None,
        exact: false,
    })
}

/// The real server's ListOptions validation.
fn validate_list_options(q: &Query, watch: bool) -> Result<(), ApiError> {
    let rv = q.get("resourceVersion").unwrap_or_default();
    let rvm = q.get("resourceVersionMatch").unwrap_or_default();
    let send_initial = q.flag("sendInitialEvents")?;
    let bookmarks = q.flag("allowWatchBookmarks")?.unwrap_or(false);
    let mut errs = Vec::new();
    if !rvm.is_empty() {
        if !matches!(rvm, "NotOlderThan" | "Exact") {
            errs.push(FieldError::not_supported("resourceVersionMatch", json!(rvm), &["Exact", "NotOlderThan", ""]));
        } else if rv.is_empty() && !(watch && send_initial.is_some()) {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if q.get("continue").is_some_and(|c| !c.is_empty()) {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rvm == "Exact" && rv == "0" {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
        if watch && send_initial.is_none() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
    }
    if let Some(si) = send_initial {
        if !watch {
            errs.push(FieldError::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
        } else {
            if rvm != "NotOlderThan" {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if si && !bookmarks {
                errs.push(FieldError::forbidden(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid_group_kind("meta.k8s.io", "ListOptions", "", errs));
    }
    if q.get("continue").is_some_and(|c| !c.is_empty()) && !rv.is_empty() && rv != "0" {
        return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
    }
    Ok(())
}

/// Waits (up to 3 s, as the real server's watch cache does) for the store to reach `rv`.
async fn wait_for_rv(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let current = lock(&shared.store).rv;
        if current >= rv {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::too_large(rv, current));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn list(
    shared: &Arc<Shared>,
    kind: &'static Kind,
    target: &Target,
    q: &Query,
    metadata_only: bool,
) -> Result<Response<Body>, ApiError> {
    validate_list_options(q, false)?;
    let mut lr = list_request(kind, target, q)?;
    let rv = q.get("resourceVersion").unwrap_or_default();
    if !rv.is_empty() && lr.continue_token.is_none() {
        let n = parse_rv(rv)?;
        lr.resource_version = Some(n);
        lr.exact = q.get("resourceVersionMatch") == Some("Exact");
        if n > 0 {
            wait_for_rv(shared, n).await?;
        }
    }
    let mut store = lock(&shared.store);
    let result = ops::list(&store, kind, &lr)?;
    store.listed_since_restart.insert(kind.storage);
    drop(store);
    let mut body = ops::list_body(kind, &result);
    if metadata_only {
        let items: Vec<Value> = result.items.iter().map(|o| to_partial(kind, o)).collect();
        body["kind"] = json!("PartialObjectMetadataList");
        body["apiVersion"] = json!("meta.k8s.io/v1");
        body["items"] = json!(items);
    }
    Ok(json_response(200, &body))
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: &Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta}))
}

struct WatchFilter {
    kind: &'static Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    metadata_only: bool,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        ops::matches(self.namespace.as_deref(), &self.labels, &self.fields, self.kind, obj)
    }

    fn render(&self, ty: &str, obj: &Value) -> Bytes {
        let view = ops::to_view(self.kind, obj);
        event_line(ty, &if self.metadata_only { to_partial(self.kind, &view) } else { view })
    }

    /// The event a watcher with this filter sees for a change, if any (objects moving in and out of the
    /// selection are ADDED and DELETED, like the real server).
    fn event(&self, c: &crate::store::Change) -> Option<Bytes> {
        if c.key.storage != self.kind.storage {
            return None;
        }
        let now = self.matches(&c.object);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        match c.change {
            ChangeType::Added => now.then(|| self.render("ADDED", &c.object)),
            ChangeType::Modified => match (before, now) {
                (true, true) => Some(self.render("MODIFIED", &c.object)),
                (false, true) => Some(self.render("ADDED", &c.object)),
                (true, false) => Some(self.render("DELETED", &c.object)),
                (false, false) => None,
            },
            ChangeType::Deleted => before.then(|| self.render("DELETED", &c.object)),
        }
    }
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn serve_watch(
    shared: &Arc<Shared>,
    kind: &'static Kind,
    target: &Target,
    q: &Query,
    metadata_only: bool,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    validate_list_options(q, true)?;
    let mut lr = list_request(kind, target, q)?;
    // A watch on a named object is a watch with a metadata.name field selector.
    if let Some(name) = &target.name {
        lr.fields.0.push(crate::selector::FieldTerm {
            field: "metadata.name".to_string(),
            negated: false,
            value: name.clone(),
        });
    }
    let bookmarks = q.flag("allowWatchBookmarks")?.unwrap_or(false);
    let send_initial = q.flag("sendInitialEvents")?;
    let rv_param = q.get("resourceVersion").unwrap_or_default().to_string();
    let requested = if rv_param.is_empty() { None } else { Some(parse_rv(&rv_param)?) };
    let timeout = match q.get("timeoutSeconds") {
        Some(t) if !t.is_empty() && t != "0" => {
            let secs: u64 = t.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?;
            Duration::from_secs(secs.min(7 * 24 * 3600))
        }
        // The real server picks between minRequestTimeout (30 min) and twice that.
        _ => Duration::from_secs(1800 + rand::random_range(0..1800)),
    };
    let filter = WatchFilter {
        kind,
        namespace: if kind.namespaced { target.namespace.clone() } else { None },
        labels: lr.labels,
        fields: lr.fields,
        metadata_only,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let rx = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let shared2 = shared.clone();
    let kill = shared.watch_epoch.subscribe();
    let open = OpenWatch::new(shared.clone(), path.to_string());
    tokio::spawn(async move {
        let _open = open;
        run_watch(shared2, filter, requested, send_initial, bookmarks, timeout, tx, kill).await;
    });
    let mut r = Response::new(Body::from_stream(rx));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    shared: Arc<Shared>,
    filter: WatchFilter,
    requested: Option<u64>,
    send_initial: Option<bool>,
    bookmarks: bool,
    timeout: Duration,
    tx: Tx,
    mut kill: tokio::sync::watch::Receiver<u64>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let kind = filter.kind;
    // A version the store has not reached yet: wait for it like the watch cache does, then give up with 504.
    if let Some(n) = requested
        && n > 0
    {
        let (restarted_unknown, current) = {
            let s = lock(&shared.store);
            // Versions from before a restart are unknown: those the reset counter has not reached again, and any
            // version for a kind nobody has listed since (the client cannot have a new one).
            let unknown = s.restarted
                && send_initial != Some(true)
                && (!s.listed_since_restart.contains(kind.storage) || (n > s.rv && n <= s.pre_restart_max));
            (unknown, s.rv)
        };
        if restarted_unknown {
            let oldest = { lock(&shared.store).oldest };
            let _ = tx.send(Ok(event_line("ERROR", &ApiError::too_old(n, oldest).status()))).await;
            return;
        }
        if n > current
            && let Err(e) = wait_for_rv(&shared, n).await
        {
            let _ = tx.send(Ok(event_line("ERROR", &e.status()))).await;
            return;
        }
    }
    // What the watch starts with is taken under the lock (so nothing falls between it and the subscription) and
    // rendered after.
    let mut objects: Vec<Arc<Value>> = Vec::new();
    let mut replay: Vec<Arc<crate::store::Change>> = Vec::new();
    let mut initial_end: Option<u64> = None;
    let started: Result<(broadcast::Receiver<Broadcast>, u64), ApiError> = {
        let mut store = lock(&shared.store);
        let from_scratch = send_initial == Some(true) || (send_initial.is_none() && requested.is_none_or(|n| n == 0));
        if from_scratch {
            objects = store.objects.iter().filter(|(k, _)| k.storage == kind.storage).map(|(_, o)| o.clone()).collect();
            store.listed_since_restart.insert(kind.storage);
            if send_initial == Some(true) {
                initial_end = Some(store.rv);
            }
            Ok((store.tx.subscribe(), store.rv))
        } else if let Some(n) = requested.filter(|n| *n > 0) {
            store.changes_since(n).map(|changes| {
                replay = changes;
                (store.tx.subscribe(), store.rv)
            })
        } else {
            Ok((store.tx.subscribe(), store.rv))
        }
    };
    let (mut rx, mut last_rv) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Ok(event_line("ERROR", &e.status()))).await;
            return;
        }
    };
    let initial = objects
        .iter()
        .filter(|o| filter.matches(o))
        .map(|o| filter.render("ADDED", o))
        .chain(replay.iter().filter_map(|c| filter.event(c)))
        .chain(initial_end.map(|rv| bookmark(kind, rv, true)));
    for ev in initial {
        if tx.send(Ok(ev)).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval.max(Duration::from_millis(10)),
    );
    // Like the watch cache, a last bookmark goes out shortly before the watch times out.
    let last_bookmark_at = deadline.checked_sub(Duration::from_secs(2)).filter(|_| timeout > Duration::from_secs(3));
    let mut last_bookmark_sent = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep_until(last_bookmark_at.unwrap_or(deadline)),
                if bookmarks && !last_bookmark_sent && last_bookmark_at.is_some() => {
                last_bookmark_sent = true;
                if tx.send(Ok(bookmark(kind, last_rv, false))).await.is_err() {
                    return;
                }
            }
            _ = kill.changed() => {
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch dropped"))).await;
                return;
            }
            _ = tick.tick(), if bookmarks => {
                if tx.send(Ok(bookmark(kind, last_rv, false))).await.is_err() {
                    return;
                }
            }
            msg = rx.recv() => match msg {
                Ok(Broadcast::Change(c)) => {
                    last_rv = last_rv.max(c.rv);
                    if let Some(ev) = filter.event(&c) && tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                // A watcher too slow for the broadcast is closed, as the real server closes slow watchers.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(std::io::Error::other("watcher too slow"))).await;
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}

/// The TLS listener, stoppable and restartable on the same address.
pub(crate) struct Listener {
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) fn serve(shared: Arc<Shared>, tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> Listener {
    let cancel = CancellationToken::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                _ = c.cancelled() => return,
                r = tcp.accept() => match r {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let conn = async move {
                    let Ok(tls) = acceptor.accept(sock).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                };
                tokio::select! {
                    _ = c.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
    Listener { cancel, task }
}

/// Per-path counters of the request log, for assertions.
pub(crate) fn count_requests(records: &[RequestRecord]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for r in records {
        *m.entry((r.method.clone(), r.path.clone())).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let Ok(Route::Resource(t)) = route("/api/v1/namespaces/ns/services/web/status") else { panic!() };
        assert_eq!((t.kind.plural, t.namespace.as_deref(), t.name.as_deref()), ("services", Some("ns"), Some("web")));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let Ok(Route::Resource(t)) = route("/api/v1/namespaces/ns") else { panic!() };
        assert_eq!((t.kind.plural, t.name.as_deref()), ("namespaces", Some("ns")));
        let Ok(Route::Resource(t)) = route("/apis/networking.k8s.io/v1/ingresses") else { panic!() };
        assert!(t.namespace.is_none() && t.name.is_none());
        let Ok(Route::Resource(t)) = route("/api/v1/watch/namespaces/ns/services") else { panic!() };
        assert!(t.watch_path);
        assert!(route("/api/v1/services/web").is_err());
        assert!(route("/api/v1/namespaces/ns/secrets/s/status").is_err());
        assert!(route("/api/v1/pods").is_err());
        assert!(matches!(route("/nope"), Ok(Route::NotFound)));
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("&watch=true&labelSelector=app%3Dweb%2Ctier+in+%28a%29&x");
        assert_eq!(q[0], ("watch".to_string(), "true".to_string()));
        assert_eq!(q[1].1, "app=web,tier in (a)");
        assert_eq!(q[2], ("x".to_string(), String::new()));
    }

    #[test]
    fn list_option_rules() {
        let q = |s: &str| Query(parse_query(s));
        assert!(
            validate_list_options(&q("resourceVersion=0&resourceVersionMatch=NotOlderThan&limit=500"), false).is_ok()
        );
        assert_eq!(validate_list_options(&q("resourceVersionMatch=NotOlderThan"), false).unwrap_err().code, 422);
        assert_eq!(
            validate_list_options(&q("resourceVersion=0&resourceVersionMatch=Exact"), false).unwrap_err().code,
            422
        );
        assert!(
            validate_list_options(
                &q("watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0"),
                true
            )
            .is_ok()
        );
        assert_eq!(
            validate_list_options(&q("sendInitialEvents=true&resourceVersionMatch=NotOlderThan"), true)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(validate_list_options(&q("continue=abc&resourceVersion=5"), false).unwrap_err().code, 400);
    }
}
