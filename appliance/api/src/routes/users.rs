//! Users and their roles (admin only).

use crate::auth::{Caller, hash_password, password_problem};
use crate::extract::Body;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{AppState, json_response, rfc3339};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::FieldError;
use serde::{Deserialize, Serialize};
use store::{Role, User};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(end_sessions))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    pub must_change_password: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> UserView {
        UserView {
            username: u.username.clone(),
            role: u.role,
            must_change_password: u.must_change_password,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
    /// Ask for a new password at first login (default true).
    #[serde(default = "yes")]
    pub must_change_password: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    /// Set a new password (ends the user's sessions).
    pub password: Option<String>,
    pub must_change_password: Option<bool>,
}

fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 64 {
        return Some("must be 1 to 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')) {
        return Some("must contain only lowercase letters, digits, '.', '_' and '-'");
    }
    None
}

async fn find(state: &AppState, username: &str) -> ApiResult<User> {
    state.control.store().user_by_name(username).await?.ok_or_else(|| ApiError::not_found(format!("user '{username}'")))
}

async fn admins(state: &AppState) -> ApiResult<usize> {
    Ok(state.control.store().list_users().await?.iter().filter(|u| u.role == Role::Admin).count())
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = Vec<UserView>), (status = 403, body = Problem)))]
async fn list_users(State(state): State<AppState>, caller: Caller) -> ApiResult<axum::Json<Vec<UserView>>> {
    caller.require(Role::Admin)?;
    Ok(axum::Json(state.control.store().list_users().await?.iter().map(UserView::from).collect()))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_user(State(state): State<AppState>, caller: Caller, Body(req): Body<NewUser>) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let mut errors = Vec::new();
    if let Some(p) = username_problem(&req.username) {
        errors.push(FieldError { field: "username".into(), message: p.into() });
    }
    if let Some(p) = password_problem(&req.username, &req.password) {
        errors.push(FieldError { field: "password".into(), message: p });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(model::ValidationErrors(errors)));
    }
    let password = req.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(ApiError::internal)??;
    let user = state.control.store().create_user(&req.username, &hash, req.role, req.must_change_password).await?;
    Ok(json_response(StatusCode::CREATED, &UserView::from(&user)))
}

/// Get a user.
#[utoipa::path(get, path = "/users/{username}", tag = "users", params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<UserView>> {
    caller.require(Role::Admin)?;
    Ok(axum::Json(UserView::from(&find(&state, &username).await?)))
}

/// Change a user's role or password.
#[utoipa::path(put, path = "/users/{username}", tag = "users", params(("username" = String, Path)), request_body = UserUpdate,
    responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    Body(req): Body<UserUpdate>,
) -> ApiResult<axum::Json<UserView>> {
    caller.require(Role::Admin)?;
    let user = find(&state, &username).await?;
    let store = state.control.store();
    if let Some(role) = req.role
        && role != user.role
    {
        if user.role == Role::Admin && admins(&state).await? <= 1 {
            return Err(ApiError::conflict("this is the last admin; make another admin first"));
        }
        store.set_role(user.id, role).await?;
    }
    if let Some(password) = &req.password {
        if let Some(p) = password_problem(&user.username, password) {
            return Err(ApiError::invalid_field("password", p));
        }
        let password = password.clone();
        let hash =
            tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(ApiError::internal)??;
        store.set_password(user.id, &hash, req.must_change_password.unwrap_or(true)).await?;
    } else if let Some(must) = req.must_change_password {
        store.set_password(user.id, &user.password_hash, must).await?;
    }
    Ok(axum::Json(UserView::from(&find(&state, &username).await?)))
}

/// Delete a user (with their sessions and tokens).
#[utoipa::path(delete, path = "/users/{username}", tag = "users", params(("username" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let user = find(&state, &username).await?;
    if user.id == caller.user.id {
        return Err(ApiError::conflict("you cannot delete yourself"));
    }
    if user.role == Role::Admin && admins(&state).await? <= 1 {
        return Err(ApiError::conflict("this is the last admin"));
    }
    state.control.store().delete_user(user.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsEnded {
    pub ended: u64,
}

/// End every session of a user (revocation).
#[utoipa::path(delete, path = "/users/{username}/sessions", tag = "users", params(("username" = String, Path)),
    responses((status = 200, body = SessionsEnded), (status = 404, body = Problem)))]
async fn end_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<axum::Json<SessionsEnded>> {
    caller.require(Role::Admin)?;
    let user = find(&state, &username).await?;
    let ended = state.control.store().delete_sessions_of(user.id).await?;
    Ok(axum::Json(SessionsEnded { ended }))
}
