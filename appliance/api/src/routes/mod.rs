//! Every endpoint, grouped by what it manages. Routes are only ever added through `routes!`, so each one is in
//! the OpenAPI document.

pub mod auth;
pub mod bgp;
pub mod config;
pub mod l2;
pub mod objects;
pub mod proxy;
pub mod snapshot;
pub mod system;
pub mod tokens;
pub mod users;

use crate::AppState;
use crate::problem::ApiError;
use axum::http::HeaderMap;
use control::ChangeMeta;
use serde::{Deserialize, Serialize};
use store::Source;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

pub fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(users::routes())
        .merge(tokens::routes())
        .merge(objects::routes())
        .merge(config::routes())
        .merge(system::routes())
        .merge(snapshot::routes())
        .merge(bgp::routes())
        .merge(l2::routes())
        .merge(proxy::routes())
}

/// A page of a list. Pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only items whose name starts with this.
    pub prefix: Option<String>,
}

impl ListParams {
    pub fn limit(&self) -> Result<usize, ApiError> {
        page_limit(self.limit)
    }
}

/// A page size from the `limit` query parameter: 1 to 1000, 100 by default.
pub fn page_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(_) => Err(ApiError::bad_request(
            "limit is out of range",
            vec![model::FieldError { field: "limit".into(), message: "must be 1 to 1000".into() }],
        )),
    }
}

/// Turns `limit + 1` rows fetched from the store into a page: the extra row only says that there is more, and
/// the cursor for the next page is the key of the last row kept.
pub fn page_of<T>(mut rows: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(key)
    } else {
        None
    };
    Page { items: rows, next_cursor }
}

/// Pages over items sorted by `key`: those after the cursor, with the prefix.
pub fn paginate<T: Clone>(items: &[T], key: impl Fn(&T) -> &str, params: &ListParams) -> Result<Page<T>, ApiError> {
    let limit = params.limit()?;
    let prefix = params.prefix.as_deref().unwrap_or("");
    // Items with the prefix are one run of the sorted list: find where it starts and stop where it ends.
    let after_cursor = match &params.cursor {
        Some(c) => items.partition_point(|i| key(i) <= c.as_str()),
        None => 0,
    };
    let start = after_cursor.max(items.partition_point(|i| key(i) < prefix));
    let mut out: Vec<T> = Vec::with_capacity(limit.min(items.len()));
    let mut next_cursor = None;
    for item in items[start..].iter().take_while(|i| key(i).starts_with(prefix)) {
        if out.len() == limit {
            next_cursor = out.last().map(|l| key(l).to_string());
            break;
        }
        out.push(item.clone());
    }
    Ok(Page { items: out, next_cursor })
}

/// Who and why, from the caller and the optional `X-Portico-Source` / `X-Portico-Message` headers.
pub fn change_meta(actor: String, headers: &HeaderMap, default_message: String) -> ChangeMeta {
    let source = match headers.get("x-portico-source").and_then(|v| v.to_str().ok()) {
        Some("ui") => Source::Ui,
        _ => Source::Api,
    };
    let message = headers
        .get("x-portico-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.chars().take(1000).collect::<String>())
        .filter(|m| !m.trim().is_empty())
        .unwrap_or(default_message);
    ChangeMeta { author: actor, source, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_and_prefix() {
        let items: Vec<String> = ["a1", "a2", "a3", "b1", "b2"].iter().map(|s| s.to_string()).collect();
        let p = |limit, cursor: Option<&str>, prefix: Option<&str>| ListParams {
            limit: Some(limit),
            cursor: cursor.map(Into::into),
            prefix: prefix.map(Into::into),
        };
        let page = paginate(&items, |s| s, &p(2, None, None)).unwrap();
        assert_eq!((page.items.as_slice(), page.next_cursor.as_deref()), (&items[..2], Some("a2")));
        let page = paginate(&items, |s| s, &p(2, Some("a2"), None)).unwrap();
        assert_eq!(page.items, ["a3", "b1"]);
        let page = paginate(&items, |s| s, &p(5, None, Some("b"))).unwrap();
        assert_eq!((page.items.len(), page.next_cursor), (2, None));
        assert!(paginate(&items, |s| s, &p(0, None, None)).is_err());
    }
}
