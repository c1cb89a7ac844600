//! The whole configuration: revisions and their diffs, rollback, whole-document apply with dry-run and
//! commit-confirm, export and import.

use super::{Page, change_meta};
use crate::auth::Caller;
use crate::extract::{Body, Query};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{AppState, etag, if_match, json_response, rfc3339, with_header};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use control::changes::ChangeOptions;
use control::portability::Export;
use control::{ChangeError, ChangeOutcome};
use model::Config;
use model::diff::{ObjectChange, diff, redact};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use store::{RevisionInfo, Role};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_revisions))
        .routes(routes!(get_revision))
        .routes(routes!(rollback))
        .routes(routes!(get_config, put_config))
        .routes(routes!(confirm))
        .routes(routes!(export_config))
        .routes(routes!(import_config))
        .layer(axum::extract::DefaultBodyLimit::max(crate::DOCUMENT_BODY_LIMIT))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionView {
    pub number: u64,
    pub created_at: String,
    pub author: String,
    /// `api`, `ui`, `cli`, `import` or `system`.
    pub source: String,
    pub message: String,
    /// The revision whose configuration this one restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

impl From<&RevisionInfo> for RevisionView {
    fn from(r: &RevisionInfo) -> RevisionView {
        RevisionView {
            number: r.number,
            created_at: rfc3339(r.created_at),
            author: r.author.clone(),
            source: r.source.as_str().into(),
            message: r.message.clone(),
            rollback_of: r.rollback_of,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionDetail {
    #[serde(flatten)]
    pub revision: RevisionView,
    /// What this revision changed, object by object.
    pub changes: Vec<ObjectChange>,
    /// The whole configuration after this revision (with `document=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Config>,
}

/// The result of a whole-document change.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplyResult {
    /// The revision written; absent for a dry run or when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<RevisionView>,
    pub dry_run: bool,
    pub changes: Vec<ObjectChange>,
    /// When set, the change reverts at this time unless confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevisionListParams {
    /// 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<u64>,
}

/// List revisions, newest first.
#[utoipa::path(get, path = "/revisions", tag = "config", params(RevisionListParams), responses((status = 200, body = Page<RevisionView>)))]
async fn list_revisions(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<RevisionListParams>,
) -> ApiResult<axum::Json<Page<RevisionView>>> {
    let limit = super::page_limit(p.limit)?;
    let rows = state.control.store().revisions(p.cursor, u32::try_from(limit + 1).unwrap_or(1001)).await?;
    let page = super::page_of(rows, limit, |r| r.number.to_string());
    Ok(axum::Json(Page { items: page.items.iter().map(RevisionView::from).collect(), next_cursor: page.next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevisionParams {
    /// Include the whole configuration after this revision.
    #[serde(default)]
    pub document: bool,
}

/// One revision with its diff.
#[utoipa::path(get, path = "/revisions/{number}", tag = "config", params(("number" = u64, Path), RevisionParams),
    responses((status = 200, body = RevisionDetail), (status = 404, body = Problem)))]
async fn get_revision(
    State(state): State<AppState>,
    _caller: Caller,
    Path(number): Path<u64>,
    Query(p): Query<RevisionParams>,
) -> ApiResult<axum::Json<RevisionDetail>> {
    let store = state.control.store();
    let info = store.revision(number).await?.ok_or_else(|| ApiError::not_found(format!("revision {number}")))?;
    let (before, after) = store.revision_changes(number).await?;
    let document = if p.document { Some(state.control.load_revision(number).await?.redacted()) } else { None };
    let mut changes = diff(&before, &after);
    changes.iter_mut().for_each(redact);
    Ok(axum::Json(RevisionDetail { revision: RevisionView::from(&info), changes, document }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApplyParams {
    /// Validate and return the diff without applying it.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply, then revert automatically unless POST /config/confirm arrives within this many seconds (10 to 3600).
    pub confirm_within: Option<u64>,
}

impl ApplyParams {
    fn options(&self) -> ApiResult<ChangeOptions> {
        let confirm_within = match self.confirm_within {
            None => None,
            Some(s @ 10..=3600) => Some(Duration::from_secs(s)),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "confirm_within is out of range",
                    vec![model::FieldError {
                        field: "confirm_within".into(),
                        message: "must be 10 to 3600 seconds".into(),
                    }],
                ));
            }
        };
        Ok(ChangeOptions { dry_run: self.dry_run, confirm_within, ..ChangeOptions::default() })
    }
}

async fn apply_result(state: &AppState, outcome: ChangeOutcome, dry_run: bool) -> ApiResult<Response> {
    let confirm_before = match (&outcome.revision, state.control.pending_confirm().await?) {
        (Some(r), Some(p)) if p.revision == r.number => Some(rfc3339(p.deadline)),
        _ => None,
    };
    let mut changes = outcome.changes;
    changes.iter_mut().for_each(redact);
    let result =
        ApplyResult { revision: outcome.revision.as_ref().map(RevisionView::from), dry_run, changes, confirm_before };
    let mut response = json_response(StatusCode::OK, &result);
    if let Some(r) = &outcome.revision
        && let Ok(v) = HeaderValue::from_str(&r.number.to_string())
    {
        response = with_header(response, "x-portico-revision", v);
        response = with_header(response, "etag", etag(r.number));
    }
    Ok(response)
}

/// Restore the configuration of a revision, as a new revision (dry-run and commit-confirm work here too).
#[utoipa::path(post, path = "/revisions/{number}/rollback", tag = "config", params(("number" = u64, Path), ApplyParams),
    responses((status = 200, body = ApplyResult), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(number): Path<u64>,
    Query(p): Query<ApplyParams>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let meta = change_meta(caller.actor(), &headers, format!("roll back to revision {number}"));
    let outcome = state.control.rollback(meta, number, p.options()?).await?;
    apply_result(&state, outcome, p.dry_run).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FormatParams {
    /// `json` (default) or `yaml`; `Accept: application/yaml` works too.
    pub format: Option<String>,
}

fn wants_yaml(headers: &HeaderMap, format: Option<&str>) -> ApiResult<bool> {
    match format {
        Some("yaml") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            "unknown format",
            vec![model::FieldError { field: "format".into(), message: format!("'{other}' is not json or yaml") }],
        )),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/yaml") || a.contains("application/x-yaml"))),
    }
}

fn document_response<T: Serialize>(doc: &T, yaml: bool) -> ApiResult<Response> {
    if yaml {
        let text = serde_yaml_ng::to_string(doc).map_err(ApiError::internal)?;
        Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
    } else {
        Ok(json_response(StatusCode::OK, doc))
    }
}

/// The whole configuration document; its ETag is the current revision.
#[utoipa::path(get, path = "/config", tag = "config", params(FormatParams),
    responses((status = 200, content((Config = "application/json"), (Config = "application/yaml")))))]
async fn get_config(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
    Query(p): Query<FormatParams>,
) -> ApiResult<Response> {
    let current = state.control.current();
    let response = document_response(&current.config.redacted(), wants_yaml(&headers, p.format.as_deref())?)?;
    Ok(with_header(response, "etag", etag(current.revision)))
}

/// Replace the whole configuration: all or nothing. JSON or YAML. With `If-Match`, only if the current
/// revision is still that one.
#[utoipa::path(put, path = "/config", tag = "config", params(ApplyParams, ("If-Match" = Option<String>, Header)),
    request_body(content((Config = "application/json"), (Config = "application/yaml"))),
    responses((status = 200, body = ApplyResult), (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn put_config(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(p): Query<ApplyParams>,
    Body(config): Body<Config>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let mut options = p.options()?;
    options.expected_revision = if_match(&headers)?;
    let meta = change_meta(caller.actor(), &headers, "apply configuration document".into());
    let outcome = state
        .control
        .change(meta, options, move |c| {
            let mut config = config;
            model::cluster::carry_credentials(&c.clusters, &mut config.clusters);
            *c = config;
            Ok(())
        })
        .await?;
    apply_result(&state, outcome, p.dry_run).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Confirmed {
    pub revision: u64,
}

/// Confirm the change applied with `confirm_within`, so that it stays.
#[utoipa::path(post, path = "/config/confirm", tag = "config",
    responses((status = 200, body = Confirmed), (status = 409, body = Problem)))]
async fn confirm(State(state): State<AppState>, caller: Caller) -> ApiResult<axum::Json<Confirmed>> {
    caller.require(Role::Operator)?;
    let revision = state.control.confirm().await?;
    Ok(axum::Json(Confirmed { revision }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `json` (default) or `yaml`.
    pub format: Option<String>,
    /// Include cluster credentials, in clear (admin only). Off by default.
    #[serde(default)]
    pub include_secrets: bool,
}

/// Export the configuration with its VIP allocations (the format `portico config import` and
/// POST /config/import read). Credentials only with `include_secrets=true` (admin).
#[utoipa::path(get, path = "/config/export", tag = "config", params(ExportParams),
    responses((status = 200, content((Export = "application/json"), (Export = "application/yaml")))))]
async fn export_config(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(p): Query<ExportParams>,
) -> ApiResult<Response> {
    caller.require(if p.include_secrets { Role::Admin } else { Role::Operator })?;
    let mut export = state.control.export();
    if !p.include_secrets {
        export.config = export.config.redacted();
    }
    document_response(&export, wants_yaml(&headers, p.format.as_deref())?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    #[serde(default)]
    pub dry_run: bool,
}

/// Replace the configuration with an export, keeping its VIPs where they fit.
#[utoipa::path(post, path = "/config/import", tag = "config", params(ImportParams),
    request_body(content((Export = "application/json"), (Export = "application/yaml"))),
    responses((status = 200, body = ApplyResult), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn import_config(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(p): Query<ImportParams>,
    Body(export): Body<Export>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let mut meta = change_meta(caller.actor(), &headers, "import configuration".into());
    meta.source = store::Source::Import;
    let outcome = state.control.import(meta, export, p.dry_run).await.map_err(|e: ChangeError| ApiError::from(e))?;
    apply_result(&state, outcome, p.dry_run).await
}
