//! The object operations (create, get, list, update, patch, apply, delete) on the store, shared by the HTTP
//! handlers and the test-facing helpers. Objects are kept in their storage form; `to_view` and `from_view` convert
//! for kinds that share a storage (events.k8s.io Events are core Events underneath).

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::kinds::{Generation, KINDS, Kind};
use crate::patch;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, FieldError};
use crate::store::{ObjKey, Store, rv_of};
use crate::validate::{self, ClusterNetwork};

pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The kind objects of a storage are kept as.
pub fn storage_kind(storage: &str) -> &'static Kind {
    KINDS.iter().find(|k| k.storage == storage).unwrap_or(&KINDS[0])
}

const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &mut Value, pairs: &[(&str, &str)], forward: bool) {
    if let Some(m) = obj.as_object_mut() {
        for (a, b) in pairs {
            let (from, to) = if forward { (a, b) } else { (b, a) };
            if let Some(v) = m.remove(*from) {
                m.insert((*to).to_string(), v);
            }
        }
    }
}

/// Storage form to the representation of `kind`, with `kind` and `apiVersion` set.
pub fn to_view(kind: &Kind, obj: &Value) -> Value {
    let mut v = obj.clone();
    if kind.group == "events.k8s.io" {
        rename(&mut v, EVENT_FIELDS, true);
    }
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".to_string(), json!(kind.kind));
        m.insert("apiVersion".to_string(), json!(kind.api_version()));
    }
    v
}

/// The representation of `kind` to storage form.
pub fn from_view(kind: &Kind, obj: &Value) -> Value {
    let mut v = obj.clone();
    if kind.group == "events.k8s.io" {
        rename(&mut v, EVENT_FIELDS, false);
    }
    let sk = storage_kind(kind.storage);
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".to_string(), json!(sk.kind));
        m.insert("apiVersion".to_string(), json!(sk.api_version()));
    }
    v
}

pub fn key(kind: &Kind, namespace: Option<&str>, name: &str) -> ObjKey {
    ObjKey {
        storage: kind.storage,
        namespace: if kind.namespaced { namespace.unwrap_or_default().to_string() } else { String::new() },
        name: name.to_string(),
    }
}

/// Server-wide settings the operations need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub net: ClusterNetwork,
    /// Create a namespace on first use instead of answering 404.
    pub implicit_namespaces: bool,
}

/// Who writes, and how.
#[derive(Debug, Clone)]
pub struct WriteCtx<'a> {
    pub kind: &'static Kind,
    pub namespace: Option<&'a str>,
    pub subresource: Option<&'a str>,
    pub manager: String,
    pub dry_run: bool,
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).map(str::to_string)
}

fn ensure_metadata(obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    if !obj["metadata"].is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// The body's kind and apiVersion, when given, must be those of the endpoint.
pub fn check_type(kind: &Kind, obj: &Value) -> Result<(), ApiError> {
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
        && av != kind.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != kind.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            kind.kind
        )));
    }
    Ok(())
}

fn ensure_namespace(store: &mut Store, settings: &Settings, ns: &str, dry_run: bool) -> Result<(), ApiError> {
    let k = ObjKey { storage: "namespaces", namespace: String::new(), name: ns.to_string() };
    if let Some(existing) = store.get(&k) {
        if existing.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            ));
        }
        return Ok(());
    }
    if !settings.implicit_namespaces {
        return Err(ApiError::namespace_not_found(ns));
    }
    if !dry_run {
        store.put(k, new_namespace(ns));
    }
    Ok(())
}

pub fn new_namespace(name: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now(),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..5).map(|_| GENERATE_CHARS[rng.random_range(0..GENERATE_CHARS.len())] as char).collect()
}

/// The DefaultIngressClass admission plugin: an Ingress created without a class (and without the legacy
/// annotation) gets the default IngressClass, the newest one when several are marked default.
fn default_ingress_class(store: &Store, obj: &mut Value) {
    let has_class = obj.pointer("/spec/ingressClassName").is_some_and(|v| !v.is_null());
    let legacy = obj.pointer("/metadata/annotations/kubernetes.io~1ingress.class").is_some();
    if has_class || legacy || !obj["spec"].is_object() {
        return;
    }
    let default = store
        .objects
        .iter()
        .filter(|(k, v)| {
            k.storage == "ingressclasses"
                && v.pointer("/metadata/annotations/ingressclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
        })
        .max_by(|(ka, a), (kb, b)| {
            let ts = |v: &Value| v.pointer("/metadata/creationTimestamp").and_then(Value::as_str).map(str::to_string);
            (ts(a), rv_of(a), &kb.name).cmp(&(ts(b), rv_of(b), &ka.name))
        });
    if let Some((k, _)) = default {
        obj["spec"]["ingressClassName"] = json!(k.name);
    }
}

/// Defaulting and validation of one object in storage form; `old` on update.
fn default_and_validate(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let kind = ctx.kind;
    let name = meta(obj, "name").unwrap_or_default();
    match kind.storage {
        "services" => validate::load_balancer_status_types(obj, "ServiceStatus").map_err(ApiError::bad_request)?,
        "ingresses" => validate::load_balancer_status_types(obj, "IngressStatus").map_err(ApiError::bad_request)?,
        _ => {}
    }
    let mut errs: Vec<FieldError> = Vec::new();
    match kind.storage {
        "services" => {
            errs.extend(validate::default_service(obj, old, &settings.net, &mut store.alloc));
            validate::default_service_status(obj);
        }
        "secrets" => errs.extend(validate::default_secret(obj)),
        "endpointslices" => validate::default_endpoint_slice(obj),
        "namespaces" => {
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if labels.is_object() {
                    labels["kubernetes.io/metadata.name"] = json!(name);
                }
            }
        }
        _ => {}
    }
    validate::object_meta(kind, obj, &mut errs);
    let status_write = ctx.subresource == Some("status");
    match kind.storage {
        "services" => {
            // Status is validated where it is written (on the main resource it is the stored one).
            if status_write {
                validate::service_status(obj, &mut errs);
            } else {
                validate::service(obj, old, &mut errs);
            }
        }
        "ingresses" => {
            if status_write {
                validate::ingress_status(obj, &mut errs);
            } else {
                validate::ingress(obj, &mut errs);
            }
        }
        "ingressclasses" => validate::ingress_class(obj, old, &mut errs),
        "endpointslices" => validate::endpoint_slice(obj, &mut errs),
        "secrets" => validate::secret(obj, old, &mut errs),
        "events" => validate::event(obj, kind.group == "events.k8s.io", &mut errs),
        _ => {}
    }
    if errs.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind, &name, errs)) }
}

/// Creates an object (the body in the representation of `ctx.kind`). Returns the stored object, in storage form.
pub fn create(store: &mut Store, settings: &Settings, ctx: &WriteCtx<'_>, body: Value) -> Result<Arc<Value>, ApiError> {
    create_owned(store, settings, ctx, body, None)
}

fn create_owned(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    body: Value,
    managed_fields: Option<Value>,
) -> Result<Arc<Value>, ApiError> {
    let kind = ctx.kind;
    let mut body = body;
    ensure_metadata(&mut body)?;
    check_type(kind, &body)?;
    let mut obj = from_view(kind, &body);
    if kind.namespaced {
        let url_ns = ctx.namespace.unwrap_or_default();
        match meta(&obj, "namespace") {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(url_ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if meta(&obj, "resourceVersion").is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    let name = match meta(&obj, "name").filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => match meta(&obj, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => {
                let n = format!("{prefix}{}", generate_suffix());
                obj["metadata"]["name"] = json!(n);
                n
            }
            None => String::new(),
        },
    };
    let m = obj["metadata"].as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for f in
        ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"]
    {
        m.remove(f);
    }
    if kind.storage == "ingresses" {
        default_ingress_class(store, &mut obj);
    }
    // Strategies that clear status on create.
    if matches!(kind.storage, "services" | "ingresses") {
        obj["status"] = json!({"loadBalancer": {}});
    }
    default_and_validate(store, settings, ctx, &mut obj, None)?;
    if kind.namespaced {
        ensure_namespace(store, settings, ctx.namespace.unwrap_or_default(), ctx.dry_run)?;
    }
    let k = key(kind, ctx.namespace, &name);
    if store.get(&k).is_some() {
        return Err(ApiError::already_exists(kind, &name));
    }
    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    obj["metadata"]["creationTimestamp"] = json!(now());
    if kind.generation != Generation::None {
        obj["metadata"]["generation"] = json!(1);
    }
    match managed_fields {
        Some(mf) => obj["metadata"]["managedFields"] = mf,
        None => {
            let scope = if kind.status { patch::Scope::NotStatus } else { patch::Scope::All };
            patch::record_update(kind.plural, &kind.api_version(), &ctx.manager, "", scope, &now(), None, &mut obj);
        }
    }
    if ctx.dry_run {
        return Ok(Arc::new(obj));
    }
    Ok(store.put(k, obj))
}

fn strip_managed(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    v
}

/// How the new state of an update was computed.
pub enum Managed {
    /// A plain write: managed fields are computed from the difference.
    Update,
    /// Server-side apply already computed them.
    Done,
}

/// Commits a new state (storage form) of an existing object; `old` is the stored object. Answers the stored
/// result (unchanged when the write changed nothing, like the real server).
pub fn commit_update(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    old: &Arc<Value>,
    mut obj: Value,
    managed: Managed,
) -> Result<Arc<Value>, ApiError> {
    let kind = ctx.kind;
    let name = meta(old, "name").unwrap_or_default();
    ensure_metadata(&mut obj)?;
    if let Some(n) = meta(&obj, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    // Optimistic concurrency: a resourceVersion in the body must be the current one.
    if let Some(rv) = meta(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
        match rv.parse::<u64>() {
            Ok(n) if n == rv_of(old) => {}
            Ok(_) => return Err(ApiError::stale(kind, &name)),
            Err(_) => return Err(ApiError::bad_request(format!("invalid resource version: {rv:?}"))),
        }
    }
    if let Some(uid) = meta(&obj, "uid").filter(|s| !s.is_empty())
        && Some(&uid) != meta(old, "uid").as_ref()
    {
        return Err(ApiError::conflict(
            kind,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta(old, "uid").unwrap_or_default()
            ),
        ));
    }
    // The status subresource: writes to /status change only .status; writes to the main resource never do.
    if kind.status {
        if ctx.subresource == Some("status") {
            let status = obj.get("status").cloned().unwrap_or(Value::Null);
            let managed_fields = obj.pointer("/metadata/managedFields").cloned();
            obj = (**old).clone();
            match status {
                Value::Null => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
                s => obj["status"] = s,
            }
            if let (Managed::Done, Some(mf)) = (&managed, managed_fields) {
                obj["metadata"]["managedFields"] = mf;
            }
        } else {
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    // System fields come from the stored object.
    for f in ["uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"]
    {
        match old["metadata"].get(f) {
            Some(v) => obj["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    obj["metadata"]["name"] = json!(name);
    if let Some(m) = obj.as_object_mut() {
        m.insert("kind".to_string(), old["kind"].clone());
        m.insert("apiVersion".to_string(), old["apiVersion"].clone());
    }
    default_and_validate(store, settings, ctx, &mut obj, Some(old))?;
    // metadata.generation
    let changed = match kind.generation {
        Generation::None => false,
        Generation::Spec => old.get("spec") != obj.get("spec"),
        Generation::AllButMetadata => {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                }
                v
            };
            strip(old) != strip(&obj)
        }
    };
    if changed {
        let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        obj["metadata"]["generation"] = json!(g + 1);
    }
    match managed {
        Managed::Update => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            let sub = ctx.subresource.unwrap_or_default();
            let scope = match (kind.status, sub) {
                (false, _) => patch::Scope::All,
                (true, "status") => patch::Scope::OnlyStatus,
                (true, _) => patch::Scope::NotStatus,
            };
            patch::record_update(
                kind.plural,
                &kind.api_version(),
                &ctx.manager,
                sub,
                scope,
                &now(),
                Some(old),
                &mut obj,
            );
        }
        Managed::Done => {}
    }
    if strip_managed(&obj) == strip_managed(old) {
        return Ok(old.clone());
    }
    let k = key(kind, meta(old, "namespace").as_deref(), &name);
    // A terminating object whose last finalizer is gone is deleted.
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    let no_finalizers = obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
    if ctx.dry_run {
        return Ok(Arc::new(obj));
    }
    if terminating && no_finalizers {
        store.put(k.clone(), obj);
        return Ok(store.delete(&k).unwrap_or_else(|| old.clone()));
    }
    Ok(store.put(k, obj))
}

/// PUT: replaces an object. Events are created when missing (their strategy allows create-on-update).
pub fn update(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    name: &str,
    body: Value,
) -> Result<(u16, Arc<Value>), ApiError> {
    let kind = ctx.kind;
    let mut body = body;
    ensure_metadata(&mut body)?;
    check_type(kind, &body)?;
    if let Some(n) = meta(&body, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    if kind.namespaced
        && let Some(ns) = meta(&body, "namespace").filter(|n| !n.is_empty())
        && Some(ns.as_str()) != ctx.namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let k = key(kind, ctx.namespace, name);
    let Some(old) = store.get(&k) else {
        if kind.storage == "events" && ctx.subresource.is_none() {
            body["metadata"]["name"] = json!(name);
            if let Some(m) = body["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            return create(store, settings, ctx, body).map(|o| (201, o));
        }
        return Err(ApiError::not_found(kind, name));
    };
    let obj = from_view(kind, &body);
    commit_update(store, settings, ctx, &old, obj, Managed::Update).map(|o| (200, o))
}

/// The patch formats the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// PATCH (all four formats). Returns the HTTP code (201 when apply created the object) and the stored object.
pub fn patch(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    name: &str,
    patch_type: PatchType,
    body: &[u8],
    force: bool,
) -> Result<(u16, Arc<Value>), ApiError> {
    let kind = ctx.kind;
    if force && patch_type != PatchType::Apply {
        return Err(ApiError::invalid_group_kind(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![FieldError::forbidden("force", "may not be specified for non-apply patch")],
        ));
    }
    if patch_type == PatchType::Apply && ctx.manager.is_empty() {
        return Err(ApiError::invalid_group_kind(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![FieldError::required("fieldManager", "is required for apply patch")],
        ));
    }
    let patch_doc: Value = match patch_type {
        PatchType::Apply => {
            serde_yaml_ng::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        _ => serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    let k = key(kind, ctx.namespace, name);
    let old = store.get(&k);
    if patch_type == PatchType::Apply {
        return apply(store, settings, ctx, name, old, patch_doc, force);
    }
    let Some(old) = old else { return Err(ApiError::not_found(kind, name)) };
    let mut view = to_view(kind, &old);
    match patch_type {
        PatchType::Json => {
            if !patch_doc.is_array() {
                return Err(ApiError::bad_request("json patch must be a JSON array of operations"));
            }
            patch::json_patch(&mut view, &patch_doc).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Strategic => {
            if !patch_doc.is_object() {
                return Err(ApiError::bad_request("strategic merge patch must be a JSON object"));
            }
            patch::strategic_merge_patch(kind.plural, &mut view, &patch_doc)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        _ => {
            if !patch_doc.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut view, &patch_doc);
        }
    }
    if !view.is_object() || !view.get("metadata").is_some_and(Value::is_object) {
        return Err(ApiError::invalid(
            kind,
            name,
            vec![FieldError::invalid(
                "metadata",
                view.get("metadata").cloned().unwrap_or(Value::Null),
                "must be an object",
            )],
        ));
    }
    // A patch may name a resourceVersion (optimistic concurrency); otherwise the current one is implied.
    let patched_rv = meta(&view, "resourceVersion");
    let old_rv = meta(&old, "resourceVersion");
    if patched_rv.is_none() || patched_rv.as_deref() == Some("") {
        view["metadata"]["resourceVersion"] = json!(old_rv);
    }
    let obj = from_view(kind, &view);
    commit_update(store, settings, ctx, &old, obj, Managed::Update).map(|o| (200, o))
}

fn apply(
    store: &mut Store,
    settings: &Settings,
    ctx: &WriteCtx<'_>,
    name: &str,
    old: Option<Arc<Value>>,
    applied: Value,
    force: bool,
) -> Result<(u16, Arc<Value>), ApiError> {
    let kind = ctx.kind;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    }
    match (applied.get("apiVersion").and_then(Value::as_str), applied.get("kind").and_then(Value::as_str)) {
        (Some(av), Some(k)) if av == kind.api_version() && k == kind.kind => {}
        (None, _) | (_, None) => {
            return Err(ApiError::bad_request(
                "invalid object type: apply patches must set apiVersion and kind (Object 'Kind' is missing in the applied configuration)",
            ));
        }
        (Some(av), Some(k)) => {
            return Err(ApiError::bad_request(format!(
                "the API version or kind in the applied configuration ({av}, {k}) does not match the expected ({}, {})",
                kind.api_version(),
                kind.kind
            )));
        }
    }
    if let Some(n) = meta(&applied, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    if applied.pointer("/metadata/managedFields").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    // Only the fields of the written subresource count.
    let status_write = ctx.subresource == Some("status");
    let mut scoped = applied.clone();
    ensure_metadata(&mut scoped)?;
    if let Some(m) = scoped.as_object_mut() {
        if status_write {
            m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "status" | "metadata"));
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion"));
            }
        } else if kind.status {
            m.remove("status");
        }
    }
    let Some(old) = old else {
        if status_write {
            return Err(ApiError::not_found(kind, name));
        }
        // Apply creates a missing object, owned by the applier.
        let req = patch::ApplyRequest {
            plural: kind.plural,
            api_version: &kind.api_version(),
            manager: &ctx.manager,
            force,
            subresource: "",
            now: &now(),
        };
        let owned = patch::apply(&req, None, &scoped).map_err(|c| conflict_error(kind, name, &c))?;
        let mut body = scoped.clone();
        body["metadata"]["name"] = json!(name);
        let mf = owned.pointer("/metadata/managedFields").cloned();
        return create_owned(store, settings, ctx, body, mf).map(|o| (201, o));
    };
    if let Some(rv) = meta(&applied, "resourceVersion").filter(|s| !s.is_empty())
        && Some(&rv) != meta(&old, "resourceVersion").as_ref()
    {
        return Err(ApiError::stale(kind, name));
    }
    let req = patch::ApplyRequest {
        plural: kind.plural,
        api_version: &kind.api_version(),
        manager: &ctx.manager,
        force,
        subresource: ctx.subresource.unwrap_or_default(),
        now: &now(),
    };
    let live = to_view(kind, &old);
    let merged = patch::apply(&req, Some(&live), &scoped).map_err(|c| conflict_error(kind, name, &c))?;
    let mut obj = from_view(kind, &merged);
    obj["metadata"]["resourceVersion"] = json!(meta(&old, "resourceVersion"));
    commit_update(store, settings, ctx, &old, obj, Managed::Done).map(|o| (200, o))
}

fn conflict_error(kind: &Kind, name: &str, conflicts: &[patch::Conflict]) -> ApiError {
    let n = conflicts.len();
    let mut by_manager: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in conflicts {
        let p = patch::path_string(&c.path);
        match by_manager.iter_mut().find(|(m, _, _)| *m == c.manager) {
            Some((_, _, paths)) => paths.push(p),
            None => by_manager.push((c.manager.clone(), c.api_version.clone(), vec![p])),
        }
    }
    let mut parts = Vec::new();
    for (m, av, paths) in &by_manager {
        if paths.len() == 1 {
            parts.push(format!("conflict with {m:?} using {av}: {}", paths[0]));
        } else {
            let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
            parts.push(format!("conflicts with {m:?} using {av}:\n{}", list.join("\n")));
        }
    }
    let plural = if n == 1 { "conflict" } else { "conflicts" };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {:?} using {}", c.manager, c.api_version),
                "field": patch::path_string(&c.path),
            })
        })
        .collect();
    let mut d = json!({"name": name, "kind": kind.plural, "causes": causes});
    if !kind.group.is_empty() {
        d["group"] = json!(kind.group);
    }
    ApiError::new(409, "Conflict", format!("Apply failed with {n} {plural}: {}", parts.join("\n"))).with_details(d)
}

/// DELETE of one object. Objects with finalizers are marked for deletion instead.
pub fn delete(store: &mut Store, ctx: &WriteCtx<'_>, name: &str, options: &Value) -> Result<Arc<Value>, ApiError> {
    let kind = ctx.kind;
    let k = key(kind, ctx.namespace, name);
    let Some(old) = store.get(&k) else { return Err(ApiError::not_found(kind, name)) };
    if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str)
        && Some(uid.to_string()) != meta(&old, "uid")
    {
        return Err(ApiError::conflict(
            kind,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta(&old, "uid").unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
        && Some(rv.to_string()) != meta(&old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            kind,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta(&old, "resourceVersion").unwrap_or_default()
            ),
        ));
    }
    if ctx.dry_run {
        return Ok(old);
    }
    let has_finalizers = old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut obj = (*old).clone();
        obj["metadata"]["deletionTimestamp"] = json!(now());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if kind.storage == "namespaces" {
            obj["status"]["phase"] = json!("Terminating");
        }
        return Ok(store.put(k, obj));
    }
    if kind.storage == "namespaces" {
        let inside: Vec<ObjKey> = store.objects.keys().filter(|ok| ok.namespace == name).cloned().collect();
        for ok in inside {
            store.delete(&ok);
        }
    }
    store.delete(&k).ok_or_else(|| ApiError::not_found(kind, name))
}

/// A list request, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// `None`: most recent; `Some(0)`: any; `Some(n)`: not older than n (or exactly n when `exact`).
    pub resource_version: Option<u64>,
    pub exact: bool,
}

pub struct ListResult {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub fn matches(req_ns: Option<&str>, labels: &LabelSelector, fields: &FieldSelector, kind: &Kind, obj: &Value) -> bool {
    if let Some(ns) = req_ns
        && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns)
    {
        return false;
    }
    labels.matches_object(obj) && (fields.is_empty() || fields.matches(&to_view(kind, obj)))
}

fn encode_continue(rv: u64, start: &ObjKey) -> String {
    let start = if start.namespace.is_empty() {
        format!("/{}\u{0}", start.name)
    } else {
        format!("/{}/{}\u{0}", start.namespace, start.name)
    };
    base64::engine::general_purpose::URL_SAFE
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|e| bad(&e.to_string()))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&e.to_string()))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    let rv = v["rv"].as_u64().ok_or_else(|| bad("incorrect encoded start resourceVersion"))?;
    let start = v["start"].as_str().ok_or_else(|| bad("missing start"))?.trim_end_matches('\u{0}');
    let mut parts = start.trim_start_matches('/').splitn(2, '/');
    let a = parts.next().unwrap_or_default().to_string();
    match parts.next() {
        Some(b) => Ok((rv, a, b.to_string())),
        None => Ok((rv, String::new(), a)),
    }
}

/// Lists one kind. The version semantics are those of the real server: unset is the most recent state, "0" any
/// state (and `limit` is ignored, as the watch cache does), `Exact` the state at that version (410 once
/// compacted), and a `continue` token the consistent state of its first page (410 once compacted).
pub fn list(store: &Store, kind: &Kind, req: &ListRequest) -> Result<ListResult, ApiError> {
    let (state_rv, start): (u64, Option<(String, String)>) = match &req.continue_token {
        Some(token) => {
            let (rv, ns, name) = decode_continue(token)?;
            (rv, Some((ns, name)))
        }
        None => match (req.resource_version, req.exact) {
            (Some(n), true) => (n, None),
            _ => (store.rv, None),
        },
    };
    let objects = if state_rv == store.rv {
        store.objects.iter().filter(|(k, _)| k.storage == kind.storage).map(|(k, v)| (k.clone(), v.clone())).collect()
    } else {
        store.state_at(kind.storage, state_rv).map_err(|e| {
            if req.continue_token.is_some() {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
            } else {
                e
            }
        })?
    };
    let ns = if kind.namespaced { req.namespace.as_deref() } else { None };
    let mut matching: Vec<(ObjKey, Arc<Value>)> = objects
        .into_iter()
        .filter(|(k, _)| match &start {
            Some((sns, sname)) => (k.namespace.as_str(), k.name.as_str()) > (sns.as_str(), sname.as_str()),
            None => true,
        })
        .filter(|(_, v)| matches(ns, &req.labels, &req.fields, kind, v))
        .collect();
    matching.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
    let limit = if req.resource_version == Some(0) && req.continue_token.is_none() { None } else { req.limit };
    let mut continue_token = None;
    let mut remaining = None;
    if let Some(limit) = limit.filter(|l| *l > 0)
        && matching.len() > limit
    {
        let rest = matching.len() - limit;
        matching.truncate(limit);
        if let Some((last, _)) = matching.last() {
            continue_token = Some(encode_continue(state_rv, last));
        }
        if req.labels.is_empty() && req.fields.is_empty() {
            remaining = Some(rest);
        }
    }
    Ok(ListResult {
        items: matching.into_iter().map(|(_, v)| v).collect(),
        resource_version: state_rv,
        continue_token,
        remaining,
    })
}

/// A list response body in the representation of `kind`. Items carry no `kind`/`apiVersion`, like the real
/// server's lists of built-in kinds.
pub fn list_body(kind: &Kind, result: &ListResult) -> Value {
    let items: Vec<Value> = result
        .items
        .iter()
        .map(|o| {
            let mut v = to_view(kind, o);
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".to_string(), json!(result.resource_version.to_string()));
    if let Some(c) = &result.continue_token {
        metadata.insert("continue".to_string(), json!(c));
    }
    if let Some(r) = result.remaining {
        metadata.insert("remainingItemCount".to_string(), json!(r));
    }
    json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": metadata, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::find;

    fn settings() -> Settings {
        Settings { net: ClusterNetwork { dual_stack: false }, implicit_namespaces: true }
    }

    fn ctx(kind: &'static Kind) -> WriteCtx<'static> {
        WriteCtx { kind, namespace: Some("default"), subresource: None, manager: "test".into(), dry_run: false }
    }

    fn svc(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    #[test]
    fn paginated_list_is_consistent_and_expires() {
        let mut store = Store::new(5);
        let kind = find("", "v1", "services").unwrap();
        for i in 0..5 {
            create(&mut store, &settings(), &ctx(kind), svc(&format!("s{i}"), json!({"i": i.to_string()}))).unwrap();
        }
        let page1 = list(&store, kind, &ListRequest { limit: Some(2), ..Default::default() }).unwrap();
        assert_eq!(page1.items.len(), 2);
        assert_eq!(page1.remaining, Some(3));
        let token = page1.continue_token.clone().unwrap();
        // A change between pages does not show in the rest of the list.
        create(&mut store, &settings(), &ctx(kind), svc("s9", json!({}))).unwrap();
        delete(&mut store, &ctx(kind), "s4", &json!({})).unwrap();
        let page2 = list(
            &store,
            kind,
            &ListRequest { limit: Some(10), continue_token: Some(token.clone()), ..Default::default() },
        )
        .unwrap();
        let names: Vec<String> = page2.items.iter().map(|o| meta(o, "name").unwrap()).collect();
        assert_eq!(names, ["s2", "s3", "s4"]);
        assert_eq!(page2.resource_version, page1.resource_version);
        // Once the first page's version is compacted, the token is Gone.
        for i in 0..6 {
            create(&mut store, &settings(), &ctx(kind), svc(&format!("t{i}"), json!({}))).unwrap();
        }
        let e = list(&store, kind, &ListRequest { continue_token: Some(token), ..Default::default() }).err().unwrap();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        // rv=0 ignores the limit.
        let any = list(&store, kind, &ListRequest { limit: Some(1), resource_version: Some(0), ..Default::default() })
            .unwrap();
        assert!(any.items.len() > 1 && any.continue_token.is_none());
    }

    #[test]
    fn status_subresource_rules() {
        let mut store = Store::new(100);
        let kind = find("", "v1", "services").unwrap();
        let mut body = svc("web", json!({}));
        body["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        let created = create(&mut store, &settings(), &ctx(kind), body).unwrap();
        assert_eq!(created["status"], json!({"loadBalancer": {}}), "status is cleared on create");
        // A merge patch of the main resource ignores status.
        let c = ctx(kind);
        let p =
            br#"{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}, "metadata": {"labels": {"a": "b"}}}"#;
        let (_, o) = patch(&mut store, &settings(), &c, "web", PatchType::Merge, p, false).unwrap();
        assert_eq!(o["status"], json!({"loadBalancer": {}}));
        assert_eq!(o["metadata"]["labels"]["a"], "b");
        // Through /status, only status changes, and ipMode defaults to VIP.
        let sc = WriteCtx { subresource: Some("status"), ..ctx(kind) };
        let p = br#"{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}, "spec": {"type": "ClusterIP"}}"#;
        let (_, o) = patch(&mut store, &settings(), &sc, "web", PatchType::Merge, p, false).unwrap();
        assert_eq!(o["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
        assert_eq!(o["spec"]["type"], "LoadBalancer");
        // An identical patch writes nothing.
        let rv = rv_of(&o);
        let (_, again) = patch(&mut store, &settings(), &sc, "web", PatchType::Merge, p, false).unwrap();
        assert_eq!(rv_of(&again), rv);
        // Invalid status is 422.
        let bad = br#"{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.300", "ipMode": "VIP"}]}}}"#;
        let e = patch(&mut store, &settings(), &sc, "web", PatchType::Merge, bad, false).err().unwrap();
        assert_eq!(e.code, 422);
        // A stale resourceVersion is 409.
        let stale = br#"{"metadata": {"resourceVersion": "1"}, "spec": {"ports": [{"port": 81}]}}"#;
        let e = patch(&mut store, &settings(), &c, "web", PatchType::Merge, stale, false).err().unwrap();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
    }

    #[test]
    fn apply_creates_and_conflicts() {
        let mut store = Store::new(100);
        let kind = find("", "v1", "services").unwrap();
        let mut c = ctx(kind);
        c.manager = "portico".into();
        let body = serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"x": "1"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
        )
        .unwrap();
        let (code, o) = patch(&mut store, &settings(), &c, "web", PatchType::Apply, &body, false).unwrap();
        assert_eq!(code, 201);
        assert_eq!(o["metadata"]["managedFields"][0]["operation"], "Apply");
        let mut other = ctx(kind);
        other.manager = "someone".into();
        let body2 = serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"x": "2"}}}),
        )
        .unwrap();
        let e = patch(&mut store, &settings(), &other, "web", PatchType::Apply, &body2, false).err().unwrap();
        assert_eq!(e.code, 409);
        assert!(e.message.starts_with("Apply failed with 1 conflict: conflict with \"portico\""), "{}", e.message);
        let (_, forced) = patch(&mut store, &settings(), &other, "web", PatchType::Apply, &body2, true).unwrap();
        assert_eq!(forced["metadata"]["labels"]["x"], "2");
        // The creator owns nothing under status (it is reset on create), so a status apply does not conflict.
        let sc = WriteCtx { subresource: Some("status"), manager: "writer".into(), ..ctx(kind) };
        let st = br#"{"apiVersion": "v1", "kind": "Service", "status": {}}"#;
        patch(&mut store, &settings(), &sc, "web", PatchType::Apply, st, false).unwrap();
        // fieldManager is required.
        other.manager = String::new();
        let e = patch(&mut store, &settings(), &other, "web", PatchType::Apply, &body2, false).err().unwrap();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn ingresses_get_the_default_class() {
        let mut store = Store::new(100);
        let class = find("networking.k8s.io", "v1", "ingressclasses").unwrap();
        let ing = find("networking.k8s.io", "v1", "ingresses").unwrap();
        let cctx = WriteCtx { namespace: None, ..ctx(class) };
        create(
            &mut store,
            &settings(),
            &cctx,
            json!({"metadata": {"name": "other"}, "spec": {"controller": "x.io/y"}}),
        )
        .unwrap();
        let ingress = json!({"metadata": {"name": "i"}, "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}});
        let o = create(&mut store, &settings(), &ctx(ing), ingress.clone()).unwrap();
        assert!(o.pointer("/spec/ingressClassName").is_none());
        let default = json!({"metadata": {"name": "portico", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "portico.io/ingress"}});
        create(&mut store, &settings(), &cctx, default).unwrap();
        let mut second = ingress.clone();
        second["metadata"]["name"] = json!("j");
        let o = create(&mut store, &settings(), &ctx(ing), second).unwrap();
        assert_eq!(o["spec"]["ingressClassName"], "portico");
        assert_eq!(o["metadata"]["generation"], 1);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut store = Store::new(100);
        let kind = find("", "v1", "services").unwrap();
        create(&mut store, &settings(), &ctx(kind), svc("web", json!({}))).unwrap();
        for body in [json!(5), json!([]), json!({"metadata": "x"}), json!({"metadata": {"name": 7}, "spec": 3})] {
            let _ = create(&mut store, &settings(), &ctx(kind), body.clone());
            let _ = update(&mut store, &settings(), &ctx(kind), "web", body.clone());
            let bytes = serde_json::to_vec(&body).unwrap();
            for pt in [PatchType::Merge, PatchType::Json, PatchType::Strategic, PatchType::Apply] {
                let _ = patch(&mut store, &settings(), &ctx(kind), "web", pt, &bytes, false);
            }
        }
        let sc = WriteCtx { subresource: Some("status"), ..ctx(kind) };
        for p in [
            json!([{"op": "replace", "path": "", "value": 5}]),
            json!([{"op": "replace", "path": "/metadata", "value": "x"}]),
            json!([{"op": "replace", "path": "/spec", "value": [1]}]),
            json!([{"op": "add", "path": "/status/loadBalancer/ingress", "value": [7, "x", {"ip": 3}]}]),
        ] {
            let bytes = serde_json::to_vec(&p).unwrap();
            let main = patch(&mut store, &settings(), &ctx(kind), "web", PatchType::Json, &bytes, false);
            // Status written through the main resource is ignored, so that one is a no-op.
            assert_eq!(main.is_err(), !p[0]["path"].as_str().unwrap().starts_with("/status"), "{p}");
            let _ = patch(&mut store, &settings(), &sc, "web", PatchType::Json, &bytes, false);
        }
        let stored = store.get(&key(kind, Some("default"), "web")).unwrap();
        assert_eq!(stored["status"], json!({"loadBalancer": {}}), "ill-typed status is refused");
        let weird = br#"{"apiVersion": "v1", "kind": "Service", "metadata": "nope"}"#;
        assert!(
            patch(
                &mut store,
                &settings(),
                &WriteCtx { manager: "m".into(), ..ctx(kind) },
                "web",
                PatchType::Apply,
                weird,
                false
            )
            .is_err()
        );
        assert!(FieldSelector::parse("metadata.name=é!=ü,ö==ä").is_ok());
    }

    #[test]
    fn events_are_one_storage_in_two_representations() {
        let mut store = Store::new(100);
        let v1 = find("events.k8s.io", "v1", "events").unwrap();
        let core = find("", "v1", "events").unwrap();
        let ev = json!({"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "portico.io/cluster",
            "reportingInstance": "portico-1", "action": "Allocate", "reason": "IPAllocated", "type": "Normal", "note": "hello",
            "regarding": {"kind": "Service", "namespace": "default", "name": "web"}});
        create(&mut store, &settings(), &ctx(v1), ev).unwrap();
        let listed = list(&store, core, &ListRequest::default()).unwrap();
        let as_core = to_view(core, &listed.items[0]);
        assert_eq!(as_core["message"], "hello");
        assert_eq!(as_core["involvedObject"]["name"], "web");
        assert_eq!(to_view(v1, &listed.items[0])["note"], "hello");
        let missing = json!({"metadata": {"name": "e2"}, "reason": "X"});
        let e = create(&mut store, &settings(), &ctx(v1), missing).err().unwrap();
        assert_eq!(e.code, 422);
    }
}
