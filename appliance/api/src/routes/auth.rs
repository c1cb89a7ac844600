//! Login, logout, the caller's identity and password change.

use crate::auth::{
    Caller, Credential, SESSION_COOKIE, dummy_hash, hash_password, password_problem, random_secret, sha256_hex,
    verify_password,
};
use crate::extract::Body;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::{AppState, ClientAddr, Tls};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Role, User};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
}

/// The user name a login request tried, for the audit log.
#[derive(Debug, Clone)]
pub struct LoginAttempt(pub Arc<Mutex<Option<String>>>);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub username: String,
    /// The role in force for this request (a token's role caps its user's).
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
    pub must_change_password: bool,
    /// `session` or `token`.
    pub authenticated_by: String,
}

fn me_of(user: &User, role: Role, by: &str) -> Me {
    Me {
        username: user.username.clone(),
        role,
        must_change_password: user.must_change_password,
        authenticated_by: by.into(),
    }
}

/// Log in with a user name and password; sets an HttpOnly, SameSite=Strict session cookie.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses((status = 200, body = Me), (status = 401, body = Problem), (status = 429, body = Problem, description = "Too many failed logins; see Retry-After")))]
async fn login(
    State(state): State<AppState>,
    Extension(attempt): Extension<LoginAttempt>,
    client: Option<Extension<ClientAddr>>,
    tls: Option<Extension<Tls>>,
    headers: HeaderMap,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Response> {
    if let Ok(mut slot) = attempt.0.lock() {
        *slot = Some(req.username.chars().take(64).collect());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let origin = origin.to_str().unwrap_or("");
        if origin.split_once("://").map(|(_, h)| h) != Some(host) {
            return Err(ApiError::forbidden(format!("login from origin '{origin}' refused")));
        }
    }
    let client_ip = client.map(|c| c.0.0.ip().to_string()).unwrap_or_default();
    let admin = state.control.current().config.settings.admin.clone();
    let keys = vec![format!("user:{}", req.username), format!("client:{client_ip}")];
    let window = Duration::from_secs(u64::from(admin.login_window_seconds));
    if let Some(wait) = state.throttle.blocked(&keys, admin.max_login_failures, window) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "login-throttled",
            "Too many failed logins",
            format!("try again in {} seconds", wait.as_secs().max(1)),
        );
        e.retry_after = Some(wait.as_secs().max(1));
        return Err(e);
    }
    let user = state.control.store().user_by_name(&req.username).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| dummy_hash().to_string());
    let password = req.password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password)).await.unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        state.throttle.failed(&keys);
        tracing::warn!(username = %req.username, client = %client_ip, "failed login");
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    state.throttle.succeeded(&keys[0]);
    let cookie = start_session(&state, &user, &client_ip, tls.is_some_and(|t| t.0.0)).await?;
    tracing::info!(username = %user.username, client = %client_ip, "login");
    let body = me_of(&user, user.role, "session");
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

async fn start_session(state: &AppState, user: &User, client: &str, secure: bool) -> ApiResult<HeaderValue> {
    let minutes = state.control.current().config.settings.admin.session_minutes;
    let secret = random_secret(32);
    let expires = OffsetDateTime::now_utc() + time::Duration::minutes(i64::from(minutes));
    state.control.store().create_session(&sha256_hex(&secret), user.id, expires, client).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        u64::from(minutes) * 60,
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).map_err(ApiError::internal)
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("portico_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogoutParams {
    /// End every session of this user, not only this one.
    #[serde(default)]
    pub all: bool,
}

/// End this session (or, with `all=true`, every session of this user).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", params(LogoutParams),
    responses((status = 204), (status = 401, body = Problem)))]
async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    crate::extract::Query(params): crate::extract::Query<LogoutParams>,
) -> ApiResult<Response> {
    let store = state.control.store();
    if params.all {
        store.delete_sessions_of(caller.user.id).await?;
    } else if let Credential::Session { id_hash } = &caller.credential {
        store.delete_session(id_hash).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(response)
}

/// Who is calling, with which role.
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(caller: Caller) -> axum::Json<Me> {
    let by = match caller.credential {
        Credential::Session { .. } => "session",
        Credential::Token { .. } => "token",
    };
    axum::Json(me_of(&caller.user, caller.role, by))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Change your own password. Ends every session of the user and starts a fresh one for this browser.
#[utoipa::path(post, path = "/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    client: Option<Extension<ClientAddr>>,
    tls: Option<Extension<Tls>>,
    Body(req): Body<PasswordChange>,
) -> ApiResult<Response> {
    if matches!(caller.credential, Credential::Token { .. }) {
        return Err(ApiError::forbidden("passwords are changed in a login session, not with a token"));
    }
    let hash = caller.user.password_hash.clone();
    let current = req.current_password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &current)).await.unwrap_or(false);
    if !ok {
        return Err(ApiError::invalid_field("current_password", "is not the current password"));
    }
    if let Some(problem) = password_problem(&caller.user.username, &req.new_password) {
        return Err(ApiError::invalid_field("new_password", problem));
    }
    if req.new_password == req.current_password {
        return Err(ApiError::invalid_field("new_password", "must differ from the current password"));
    }
    let new_password = req.new_password.clone();
    let new_hash =
        tokio::task::spawn_blocking(move || hash_password(&new_password)).await.map_err(ApiError::internal)??;
    state.control.store().set_password(caller.user.id, &new_hash, false).await?;
    let client_ip = client.map(|c| c.0.0.ip().to_string()).unwrap_or_default();
    let cookie = start_session(&state, &caller.user, &client_ip, tls.is_some_and(|t| t.0.0)).await?;
    tracing::info!(username = %caller.user.username, "password changed");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}
