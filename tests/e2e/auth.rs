//! First start, passwords, login throttling, roles, tokens and CSRF.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[tokio::test]
async fn first_start_generates_a_password_that_must_be_changed() {
    let mut app = Appliance::start_with(Options { admin_password: None, ..Options::default() }).await;
    let file = app.data().join("initial-admin-password");
    let mode = std::fs::metadata(&file).expect("initial-admin-password exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the password file must be private, mode is {mode:o}");
    let generated = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(generated.len() >= 10, "generated password too short: {generated:?}");

    let api = Api::new(app.base(), None, true);
    let r = api.post("/api/v1/auth/login", json!({ "username": "admin", "password": generated })).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["must_change_password"], true, "{r:?}");
    assert_eq!(r.body["role"], "admin");

    // Until the password is changed, only /auth/me, /auth/password and /auth/logout answer.
    for path in ["/api/v1/pools", "/api/v1/status", "/api/v1/users", "/api/v1/config"] {
        api.get(path).await.expect_problem(StatusCode::FORBIDDEN, "password-change-required");
    }
    api.post("/api/v1/pools", pool("p", &["10.1.0.0/24"]))
        .await
        .expect_problem(StatusCode::FORBIDDEN, "password-change-required");
    let me = api.json("/api/v1/auth/me").await;
    assert_eq!(me["must_change_password"], true);

    // A second session of the same user, to see that a password change ends it.
    let other = app.login("admin", &generated).await;

    // The new password is checked: too short, and the wrong current password, are refused with the field.
    let r = api.post("/api/v1/auth/password", json!({ "current_password": generated, "new_password": "short" })).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["new_password"]);
    let r = api
        .post(
            "/api/v1/auth/password",
            json!({ "current_password": "not-the-password", "new_password": "a-new-password" }),
        )
        .await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["current_password"]);

    let new_password = "my-own-admin-password";
    api.post("/api/v1/auth/password", json!({ "current_password": generated, "new_password": new_password }))
        .await
        .expect(StatusCode::NO_CONTENT);
    // This browser got a fresh session and may now do everything.
    api.get("/api/v1/pools").await.expect(StatusCode::OK);
    api.post("/api/v1/pools", pool("p", &["10.1.0.0/24"])).await.expect(StatusCode::CREATED);
    assert_eq!(api.json("/api/v1/auth/me").await["must_change_password"], false);
    // The other session was ended.
    other.get("/api/v1/auth/me").await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");

    let anon = Api::new(app.base(), None, true);
    anon.post("/api/v1/auth/login", json!({ "username": "admin", "password": generated }))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let fresh = app.login("admin", new_password).await;
    assert_eq!(fresh.json("/api/v1/auth/me").await["must_change_password"], false);

    // The generated password is useless now; the next start removes its file.
    app.restart().await;
    assert!(!file.exists(), "initial-admin-password should be removed once the password was changed");
    app.login("admin", new_password).await;
}

#[tokio::test]
async fn admin_password_from_the_environment_needs_no_change() {
    let app = Appliance::start().await;
    assert!(!app.data().join("initial-admin-password").exists(), "no password file with PORTICO_ADMIN_PASSWORD");
    let api = Api::new(app.base(), None, true);
    let r = api.post("/api/v1/auth/login", json!({ "username": "admin", "password": ADMIN_PASSWORD })).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["must_change_password"], false, "{r:?}");
    assert_eq!(r.body["authenticated_by"], "session");
    api.get("/api/v1/pools").await.expect(StatusCode::OK);
    api.get("/api/v1/users").await.expect(StatusCode::OK);

    // Logging out ends the session.
    api.post("/api/v1/auth/logout", json!({})).await.expect(StatusCode::NO_CONTENT);
    api.get("/api/v1/auth/me").await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn too_short_admin_password_from_the_environment_is_refused() {
    let ws = Workspace::new();
    let output = ws.cli_with_env(
        &["run", "--admin-http", "127.0.0.1:0", "--admin-https", "off", "--data-dir", ws.data().to_str().unwrap()],
        &[("PORTICO_ADMIN_PASSWORD", "short")],
    );
    assert!(!output.status.success(), "a 5-character admin password must be refused");
    let err = stderr(&output);
    assert!(err.contains("PORTICO_ADMIN_PASSWORD") && err.contains("at least 10"), "{err}");
}

#[tokio::test]
async fn failed_logins_are_throttled_and_audited() {
    let app = Appliance::start().await;
    // A token made before the lock-out, to read the audit log afterwards.
    let admin = app.admin_token().await;

    let anon = Api::new(app.base(), None, false);
    let login = |password: &'static str| {
        let anon = anon.clone();
        async move { anon.post("/api/v1/auth/login", json!({ "username": "admin", "password": password })).await }
    };
    for _ in 0..5 {
        login("wrong-password").await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // The sixth attempt is refused before the password is even checked, right or wrong.
    let r = login(ADMIN_PASSWORD).await;
    r.expect_problem(StatusCode::TOO_MANY_REQUESTS, "login-throttled");
    let retry: u64 = r.header("retry-after").expect("Retry-After header").parse().expect("Retry-After in seconds");
    assert!((1..=300).contains(&retry), "Retry-After {retry} should be within the 300 s window");
    login("wrong-password").await.expect_problem(StatusCode::TOO_MANY_REQUESTS, "login-throttled");
    // Tokens keep working: throttling is about password logins.
    admin.get("/api/v1/pools").await.expect(StatusCode::OK);

    let audit = admin.json("/api/v1/audit?limit=50").await;
    let logins: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/api/v1/auth/login" && e["actor"] == "admin")
        .collect();
    let count = |outcome: &str, status: u16| {
        logins.iter().filter(|e| e["outcome"] == outcome && e["status"] == status && e["method"] == "POST").count()
    };
    assert_eq!(count("denied", 401), 5, "five failed logins in {logins:#?}");
    assert_eq!(count("throttled", 429), 2, "two throttled logins in {logins:#?}");
    assert_eq!(count("success", 200), 1, "the one good login in {logins:#?}");
    for e in &logins {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(!e["request_id"].as_str().unwrap_or("").is_empty(), "{e}");
    }
    // Newest first: the throttled attempts come before the failures.
    let outcomes: Vec<&str> = logins.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["throttled", "throttled", "denied", "denied", "denied", "denied", "denied", "success"]);
}

async fn create_user(admin: &Api, name: &str, role: &str) -> String {
    let password = format!("{name}-password-123");
    let r = admin
        .post(
            "/api/v1/users",
            json!({ "username": name, "password": password, "role": role, "must_change_password": false }),
        )
        .await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.body["username"], name);
    assert_eq!(r.body["role"], role);
    password
}

#[tokio::test]
async fn roles_limit_what_users_and_tokens_may_do() {
    let app = Appliance::start().await;
    let admin = app.admin().await;
    let viewer_pw = create_user(&admin, "vera", "viewer").await;
    let operator_pw = create_user(&admin, "otto", "operator").await;
    let viewer = app.login("vera", &viewer_pw).await;
    let operator = app.login("otto", &operator_pw).await;

    // Viewer: reads, never writes.
    viewer.get("/api/v1/pools").await.expect(StatusCode::OK);
    viewer.get("/api/v1/status").await.expect(StatusCode::OK);
    let r = viewer.post("/api/v1/pools", pool("v", &["10.2.0.0/24"])).await;
    r.expect_problem(StatusCode::FORBIDDEN, "forbidden");
    assert!(r.body["detail"].as_str().unwrap().contains("operator"), "{r:?}");
    viewer.get("/api/v1/users").await.expect_problem(StatusCode::FORBIDDEN, "forbidden");

    // Operator: changes configuration, but does not manage users or read the audit log.
    operator.post("/api/v1/pools", pool("o", &["10.3.0.0/24"])).await.expect(StatusCode::CREATED);
    operator.get("/api/v1/users").await.expect_problem(StatusCode::FORBIDDEN, "forbidden");
    operator.get("/api/v1/audit").await.expect_problem(StatusCode::FORBIDDEN, "forbidden");
    operator
        .post("/api/v1/users", json!({ "username": "eve", "password": "eve-password-1", "role": "admin" }))
        .await
        .expect_problem(StatusCode::FORBIDDEN, "forbidden");

    // Admin: everything.
    let users = admin.json("/api/v1/users").await;
    let mut names: Vec<&str> = users.as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["admin", "otto", "vera"]);
    admin.get("/api/v1/audit").await.expect(StatusCode::OK);
    admin.post("/api/v1/pools", pool("a", &["10.4.0.0/24"])).await.expect(StatusCode::CREATED);

    // A viewer token made by an admin reads but does not write: the token's role caps its user's.
    let view_token = app.token(&admin, "viewer").await;
    let me = view_token.json("/api/v1/auth/me").await;
    assert_eq!((me["role"].as_str(), me["authenticated_by"].as_str()), (Some("viewer"), Some("token")));
    view_token.get("/api/v1/pools").await.expect(StatusCode::OK);
    view_token
        .post("/api/v1/pools", pool("t", &["10.5.0.0/24"]))
        .await
        .expect_problem(StatusCode::FORBIDDEN, "forbidden");
    view_token.get("/api/v1/users").await.expect_problem(StatusCode::FORBIDDEN, "forbidden");

    // Nobody hands out more than they have.
    let r = viewer.post("/api/v1/tokens", json!({ "name": "up", "role": "operator" })).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["role"]);
    let r = operator.post("/api/v1/tokens", json!({ "name": "up", "role": "admin" })).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["role"]);
    let own = app.token(&viewer, "viewer").await;
    own.get("/api/v1/pools").await.expect(StatusCode::OK);

    // A non-admin sees only their own tokens; an admin sees all.
    let vera_tokens = viewer.json("/api/v1/tokens").await;
    assert!(vera_tokens.as_array().unwrap().iter().all(|t| t["owner"] == "vera"), "{vera_tokens}");
    assert_eq!(vera_tokens.as_array().unwrap().len(), 1);
    assert_eq!(admin.json("/api/v1/tokens").await.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn expired_and_revoked_tokens_stop_working() {
    let app = Appliance::start().await;
    let admin = app.admin().await;

    // A token that expires in two seconds.
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires = expires.format(&time::format_description::well_known::Rfc3339).unwrap();
    let r = admin.post("/api/v1/tokens", json!({ "name": "brief", "role": "viewer", "expires_at": expires })).await;
    r.expect(StatusCode::CREATED);
    let brief = Api::new(app.base(), Some(r.body["secret"].as_str().unwrap().into()), false);
    brief.get("/api/v1/pools").await.expect(StatusCode::OK);
    let r = eventually(Duration::from_secs(20), "token expiry", || {
        let brief = brief.clone();
        async move {
            let r = brief.get("/api/v1/pools").await;
            (r.status != StatusCode::OK).then_some(r)
        }
    })
    .await;
    r.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(r.body["detail"].as_str().unwrap().contains("expired"), "{r:?}");

    // Expiry in the past and nonsense times are refused, naming the field.
    let r = admin
        .post("/api/v1/tokens", json!({ "name": "old", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z" }))
        .await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["expires_at"]);

    // Revoking a token ends it at once.
    let r = admin.post("/api/v1/tokens", json!({ "name": "doomed", "role": "operator" })).await;
    r.expect(StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap().to_string();
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with(&format!("ptk_{id}.")), "{secret}");
    let doomed = Api::new(app.base(), Some(secret.clone()), false);
    doomed.post("/api/v1/pools", pool("d", &["10.6.0.0/24"])).await.expect(StatusCode::CREATED);
    admin.delete(&format!("/api/v1/tokens/{id}")).await.expect(StatusCode::NO_CONTENT);
    doomed.get("/api/v1/pools").await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    admin.delete(&format!("/api/v1/tokens/{id}")).await.expect_problem(StatusCode::NOT_FOUND, "not-found");

    // A wrong secret for a real id, and garbage, are both 401.
    let (prefix, _) = secret.split_once('.').unwrap();
    Api::new(app.base(), Some(format!("{prefix}.wrong")), false)
        .get("/api/v1/pools")
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    Api::new(app.base(), Some("garbage".into()), false)
        .get("/api/v1/pools")
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_header_and_a_matching_origin() {
    let app = Appliance::start().await;
    let session = app.login("admin", ADMIN_PASSWORD).await;
    let raw = |method: Method, path: &str| {
        // The session's cookie jar, without the X-Requested-With header the helper adds.
        session.client.request(method, format!("{}{path}", app.base()))
    };
    let origin = app.base();

    // Reads need nothing extra.
    send(raw(Method::GET, "/api/v1/pools")).await.expect(StatusCode::OK);

    // A change without X-Requested-With is what a cross-site form could send.
    send(raw(Method::POST, "/api/v1/pools").json(&pool("a", &["10.7.0.0/24"])))
        .await
        .expect_problem(StatusCode::FORBIDDEN, "csrf");
    send(raw(Method::DELETE, "/api/v1/settings")).await.expect_problem(StatusCode::FORBIDDEN, "csrf");
    // With the header but from a foreign origin, or marked cross-site by the browser.
    send(
        raw(Method::POST, "/api/v1/pools")
            .header("x-requested-with", "XMLHttpRequest")
            .header("origin", "http://evil.example")
            .json(&pool("a", &["10.7.0.0/24"])),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, "csrf");
    send(
        raw(Method::POST, "/api/v1/pools")
            .header("x-requested-with", "XMLHttpRequest")
            .header("sec-fetch-site", "cross-site")
            .json(&pool("a", &["10.7.0.0/24"])),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, "csrf");
    // Nothing was written by any of those.
    assert_eq!(session.json("/api/v1/pools").await["items"], json!([]));

    // Same origin with the header: accepted.
    send(
        raw(Method::POST, "/api/v1/pools")
            .header("x-requested-with", "XMLHttpRequest")
            .header("origin", &origin)
            .json(&pool("a", &["10.7.0.0/24"])),
    )
    .await
    .expect(StatusCode::CREATED);

    // A bearer token is not a browser credential: no header needed.
    let token = app.token(&session, "operator").await;
    assert!(!token.csrf_header);
    token.post("/api/v1/pools", pool("b", &["10.8.0.0/24"])).await.expect(StatusCode::CREATED);
    // Even with a foreign Origin: a token cannot be sent by a cross-site form.
    send(
        token
            .request(Method::POST, "/api/v1/pools")
            .header("origin", "http://evil.example")
            .json(&pool("c", &["10.9.0.0/24"])),
    )
    .await
    .expect(StatusCode::CREATED);

    // Logging in from a foreign origin is refused too (login CSRF).
    let anon = Api::new(app.base(), None, false);
    send(
        anon.request(Method::POST, "/api/v1/auth/login")
            .header("origin", "http://evil.example")
            .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD })),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, "forbidden");
}
