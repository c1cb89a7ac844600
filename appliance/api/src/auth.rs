//! Authentication and authorization: argon2id passwords, session cookies, bearer tokens, roles, CSRF
//! defence for cookie-authenticated changes, and login throttling.

use crate::AppState;
use crate::problem::{ApiError, ApiResult};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use axum::extract::FromRequestParts;
use axum::http::{Method, StatusCode, header, request::Parts};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Role, User};
use time::OffsetDateTime;

pub const SESSION_COOKIE: &str = "portico_session";
pub const TOKEN_PREFIX: &str = "ptk_";
pub const MIN_PASSWORD_LEN: usize = 10;

pub fn hash_password(password: &str) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(ApiError::internal)
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A valid argon2id hash of a random password, verified against when a user does not exist, so that a login
/// for an unknown user takes as long as one for a known user.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_secret(16)).unwrap_or_default())
}

/// Why a new password is not acceptable.
pub fn password_problem(username: &str, password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Some(format!("must be at least {MIN_PASSWORD_LEN} characters"));
    }
    if password.len() > 1024 {
        return Some("must be at most 1024 bytes".into());
    }
    if password.eq_ignore_ascii_case(username) {
        return Some("must not be the user name".into());
    }
    None
}

/// `bytes` random bytes, base64url without padding.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts failed logins per user and per client, in a sliding window.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    /// How long to wait before another attempt is allowed, if any key is over `max` failures in `window`.
    pub fn blocked(&self, keys: &[String], max: u32, window: Duration) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().ok()?;
        let mut wait = None;
        for key in keys {
            if let Some(times) = map.get_mut(key) {
                while times.front().is_some_and(|t| now.duration_since(*t) > window) {
                    times.pop_front();
                }
                if times.len() >= max as usize
                    && let Some(oldest) = times.front()
                {
                    let w = window.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[String]) {
        if let Ok(mut map) = self.failures.lock() {
            let now = Instant::now();
            for key in keys {
                let times = map.entry(key.clone()).or_default();
                times.push_back(now);
                // Bounded memory per key whatever the settings.
                while times.len() > 1000 {
                    times.pop_front();
                }
            }
            // Bounded number of keys: a spray of user names must not grow memory without end.
            if map.len() > 10_000 {
                map.retain(|_, t| t.back().is_some_and(|last| now.duration_since(*last) < Duration::from_secs(3600)));
            }
        }
    }

    pub fn succeeded(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    Session { id_hash: String },
    Token { id: String, name: String },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// What this request may do: the user's role, capped by the token's role for token requests.
    pub role: Role,
    pub credential: Credential,
}

impl Caller {
    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; {} has {}",
                role.as_str(),
                self.actor(),
                self.role.as_str()
            )))
        }
    }

    /// The name recorded in history and audit.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::Session { .. } => self.user.username.clone(),
            Credential::Token { name, .. } => format!("{} (token {name})", self.user.username),
        }
    }
}

/// Filled by the authentication extractor so that the audit layer knows who made the request.
#[derive(Debug, Clone, Default)]
pub struct AuditActor(pub Arc<Mutex<Option<String>>>);

impl AuditActor {
    pub fn set(&self, actor: String) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(actor);
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// Paths a user who must change their password may still use.
const PASSWORD_CHANGE_PATHS: [&str; 3] = ["/api/v1/auth/me", "/api/v1/auth/password", "/api/v1/auth/logout"];

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        if let Some(actor) = parts.extensions.get::<AuditActor>() {
            actor.set(caller.actor());
        }
        if caller.user.must_change_password
            && matches!(caller.credential, Credential::Session { .. })
            && !PASSWORD_CHANGE_PATHS.contains(&full_path(parts))
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "password-change-required",
                "Password change required",
                "this account has a generated password; set a new one with POST /api/v1/auth/password",
            ));
        }
        Ok(caller)
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> ApiResult<Caller> {
    let store = state.control.store();
    if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
        let text = auth.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let bearer = text
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unauthorized("only `Authorization: Bearer <token>` is accepted"))?;
        let (id, secret) = bearer
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(|| ApiError::unauthorized("malformed token"))?;
        let token = store.token(id).await?.ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        if !constant_time_eq(&token.secret_hash, &sha256_hex(secret)) {
            return Err(ApiError::unauthorized("unknown or revoked token"));
        }
        if token.expires_at.is_some_and(|e| e <= OffsetDateTime::now_utc()) {
            return Err(ApiError::unauthorized("token expired"));
        }
        let user =
            store.user_by_id(token.user_id).await?.ok_or_else(|| ApiError::unauthorized("token owner is gone"))?;
        state.note_token_use(&token.id).await;
        let role = token.role.min(user.role);
        return Ok(Caller { user, role, credential: Credential::Token { id: token.id, name: token.name } });
    }

    let cookie = session_cookie(parts).ok_or_else(|| {
        ApiError::unauthorized("log in with POST /api/v1/auth/login, or send `Authorization: Bearer <token>`")
    })?;
    let id_hash = sha256_hex(&cookie);
    let (_, user) = store.session(&id_hash).await?.ok_or_else(|| ApiError::unauthorized("session expired or ended"))?;
    if is_mutation(&parts.method) {
        check_csrf(parts)?;
    }
    let role = user.role;
    Ok(Caller { user, role, credential: Credential::Session { id_hash } })
}

/// The request path before nesting stripped the `/api/v1` prefix.
fn full_path(parts: &Parts) -> &str {
    parts.extensions.get::<axum::extract::OriginalUri>().map(|u| u.0.path()).unwrap_or(parts.uri.path())
}

pub fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub fn session_cookie(parts: &Parts) -> Option<String> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION_COOKIE && !v.is_empty()).then(|| v.to_string())
        })
    })
}

/// Cookie-authenticated changes must come from our own pages: a custom header (which a cross-site form cannot
/// send) and, where the browser says so, the same origin.
pub fn check_csrf(parts: &Parts) -> ApiResult<()> {
    let csrf = |detail: &str| ApiError::new(StatusCode::FORBIDDEN, "csrf", "Cross-site request refused", detail);
    if parts.headers.get("x-requested-with").is_none_or(|v| v.is_empty()) {
        return Err(csrf("cookie-authenticated changes need an `X-Requested-With` header"));
    }
    if parts.headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return Err(csrf("the browser marked this request as cross-site"));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        if origin == "null" || host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(csrf(&format!("origin '{origin}' does not match host '{host}'")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("garbage", "x"));
        assert!(password_problem("bob", "short").is_some());
        assert!(password_problem("bobbybobbyb", "BobbyBobbyB").is_some());
        assert!(password_problem("bob", "long enough pass").is_none());
    }

    #[test]
    fn throttle_blocks_after_max_failures_in_window() {
        let t = LoginThrottle::default();
        let keys = vec!["user:a".to_string(), "client:1".to_string()];
        for _ in 0..3 {
            assert!(t.blocked(&keys, 3, Duration::from_secs(60)).is_none());
            t.failed(&keys);
        }
        assert!(t.blocked(&keys, 3, Duration::from_secs(60)).is_some());
        assert!(t.blocked(&["client:1".to_string()], 3, Duration::from_secs(60)).is_some());
        t.succeeded("user:a");
        assert!(t.blocked(&["user:a".to_string()], 3, Duration::from_secs(60)).is_none());
        assert!(t.blocked(&keys, 3, Duration::from_nanos(1)).is_none(), "old failures age out");
    }

    #[test]
    fn csrf_rules() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = axum::http::Request::builder().method("POST").uri("/api/v1/pools");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(check_csrf(&req(&[("host", "a:8080")])).is_err());
        assert!(check_csrf(&req(&[("host", "a:8080"), ("x-requested-with", "x")])).is_ok());
        assert!(
            check_csrf(&req(&[("host", "a:8080"), ("x-requested-with", "x"), ("origin", "http://a:8080")])).is_ok()
        );
        assert!(check_csrf(&req(&[("host", "a:8080"), ("x-requested-with", "x"), ("origin", "http://evil")])).is_err());
        assert!(
            check_csrf(&req(&[("host", "a"), ("x-requested-with", "x"), ("sec-fetch-site", "cross-site")])).is_err()
        );
    }
}
