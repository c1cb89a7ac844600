//! API tokens: a secret shown once, stored as a hash, with a role no higher than its creator's.

use crate::auth::{Caller, TOKEN_PREFIX, random_secret, sha256_hex};
use crate::extract::Body;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{AppState, json_response, rfc3339};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use store::{Role, Token};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tokens, create_token)).routes(routes!(delete_token))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    pub owner: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer token. Shown only now; only its hash is kept.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    /// At most the creator's own role.
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    /// RFC 3339 time after which the token stops working.
    pub expires_at: Option<String>,
}

fn view(t: &Token, owner: &str) -> TokenView {
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        owner: owner.to_string(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
    }
}

/// List your tokens (admins see everyone's).
#[utoipa::path(get, path = "/tokens", tag = "tokens", responses((status = 200, body = Vec<TokenView>)))]
async fn list_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<axum::Json<Vec<TokenView>>> {
    let store = state.control.store();
    let scope = if caller.role == Role::Admin { None } else { Some(caller.user.id) };
    let names: HashMap<i64, String> = store.list_users().await?.into_iter().map(|u| (u.id, u.username)).collect();
    let tokens = store.list_tokens(scope).await?;
    Ok(axum::Json(tokens.iter().map(|t| view(t, names.get(&t.user_id).map(String::as_str).unwrap_or("?"))).collect()))
}

/// Create a token. The response carries the secret, once.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn create_token(State(state): State<AppState>, caller: Caller, Body(req): Body<NewToken>) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 {
        errors.push(model::FieldError { field: "name".into(), message: "must be 1 to 64 characters".into() });
    }
    if req.role > caller.role {
        errors.push(model::FieldError {
            field: "role".into(),
            message: format!("cannot exceed your own role ({})", caller.role.as_str()),
        });
    }
    let expires_at = match &req.expires_at {
        None => None,
        Some(text) => match OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
            Ok(t) if t > OffsetDateTime::now_utc() => Some(t),
            Ok(_) => {
                errors.push(model::FieldError { field: "expires_at".into(), message: "must be in the future".into() });
                None
            }
            Err(_) => {
                errors.push(model::FieldError {
                    field: "expires_at".into(),
                    message: format!("'{text}' is not an RFC 3339 time like 2027-01-31T00:00:00Z"),
                });
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(model::ValidationErrors(errors)));
    }
    let id = random_secret(9);
    let secret = random_secret(32);
    let token = Token {
        id: id.clone(),
        name: name.to_string(),
        role: req.role,
        secret_hash: sha256_hex(&secret),
        user_id: caller.user.id,
        created_at: OffsetDateTime::now_utc(),
        expires_at,
        last_used_at: None,
    };
    state.control.store().create_token(&token).await?;
    let created =
        CreatedToken { token: view(&token, &caller.user.username), secret: format!("{TOKEN_PREFIX}{id}.{secret}") };
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Revoke a token (your own, or any as admin).
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
async fn delete_token(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let store = state.control.store();
    let token = store.token(&id).await?.filter(|t| caller.role == Role::Admin || t.user_id == caller.user.id);
    if token.is_none() {
        return Err(ApiError::not_found(format!("token '{id}'")));
    }
    store.delete_token(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
