//! Probes, metrics, status, request IDs, signals, the HTTPS listener and the small offline commands.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[tokio::test]
async fn probes_answer_without_credentials() {
    let app = Appliance::start().await;
    let anon = app.anonymous();
    for path in ["/healthz", "/api/v1/healthz"] {
        let r = anon.get(path).await;
        r.expect(StatusCode::OK);
        assert_eq!(r.body, json!({ "status": "ok" }), "{path}");
    }
    for path in ["/readyz", "/api/v1/readyz"] {
        let r = anon.get(path).await;
        r.expect(StatusCode::OK);
        assert_eq!(r.body, json!({ "status": "ready" }), "{path}");
    }
    // Everything else needs credentials.
    for path in ["/api/v1/status", "/api/v1/pools", "/api/v1/config", "/api/v1/auth/me", "/metrics", "/api/v1/metrics"]
    {
        anon.get(path).await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[tokio::test]
async fn metrics_need_credentials_and_cover_http_process_and_snapshots() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("m", &["10.150.0.0/24"])).await.expect(StatusCode::CREATED);
    api.post("/api/v1/services", service("m1")).await.expect(StatusCode::CREATED);
    app.anonymous().get("/metrics").await.expect(StatusCode::UNAUTHORIZED);

    for path in ["/metrics", "/api/v1/metrics"] {
        let r = api.get(path).await;
        r.expect(StatusCode::OK);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"), "{r:?}");
        let text = &r.text;
        assert!(text.contains("portico_http_requests_total{"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("portico_http_requests_total{")
                && l.contains("route=\"/api/v1/pools\"")
                && l.contains("method=\"POST\"")
                && l.contains("status=\"201\"")),
            "a POST /api/v1/pools 201 is counted: {text}"
        );
        assert!(text.lines().any(|l| l.starts_with("process_")), "process metrics: {text}");
        let generation = text
            .lines()
            .find(|l| l.starts_with("portico_snapshot_generation "))
            .unwrap_or_else(|| panic!("portico_snapshot_generation in {text}"));
        let value: f64 = generation.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(value >= 1.0, "{generation}");
        assert!(text.contains("portico_config_revision "), "{text}");
        assert!(text.lines().any(|l| l.starts_with("portico_allocations 1")), "{text}");
    }
}

#[tokio::test]
async fn status_reports_generation_and_subsystems() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    let status = api.json("/api/v1/status").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["generation"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["revision"], 1);
    assert!(status["store_bytes"].as_u64().unwrap() > 0, "{status}");

    api.post("/api/v1/pools", pool("st", &["10.160.0.0/24"])).await.expect(StatusCode::CREATED);
    api.post("/api/v1/services", service("st1")).await.expect(StatusCode::CREATED);
    // Snapshots are compiled and applied asynchronously: wait for the subsystem to catch up.
    let status = eventually(Duration::from_secs(30), "snapshot of revision 3 applied by logging", || {
        let api = api.clone();
        async move {
            let s = api.json("/api/v1/status").await;
            let generation = s["generation"].as_u64()?;
            let applied = s["subsystems"]["logging"]["applied_generation"].as_u64()?;
            (s["snapshot_revision"] == 3 && applied == generation).then_some(s)
        }
    })
    .await;
    assert_eq!(status["revision"], 3);
    assert_eq!(status["services"], 1);
    assert_eq!(status["allocations"], 1);
    let logging = &status["subsystems"]["logging"];
    assert_eq!(logging["health"], "ok", "{status}");
    assert!(logging["detail"].as_str().unwrap().contains("info"), "{status}");

    // Settings apply live: the log level changes without a restart.
    api.put("/api/v1/settings", json!({ "log_level": "debug" })).await.expect(StatusCode::OK);
    eventually(Duration::from_secs(30), "log level debug applied", || {
        let api = api.clone();
        async move {
            let s = api.json("/api/v1/status").await;
            s["subsystems"]["logging"]["detail"].as_str()?.contains("debug").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    let anon = app.anonymous();
    let responses = vec![
        anon.get("/healthz").await,
        anon.get("/api/v1/pools").await,
        anon.get("/api/v1/nothing-here").await,
        api.get("/api/v1/pools").await,
        api.get("/api/v1/pools/missing").await,
        api.post("/api/v1/pools", json!({ "bad": true })).await,
        api.post("/api/v1/pools", pool("r", &["10.170.0.0/24"])).await,
        api.delete("/api/v1/pools/r").await,
        api.get("/api/v1/openapi.json").await,
        api.get("/metrics").await,
    ];
    let mut ids = std::collections::BTreeSet::new();
    for r in &responses {
        let id = r.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id on {r:?}"));
        assert!(!id.is_empty());
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), responses.len(), "request IDs are unique");
    // A caller's own request ID is kept, and recorded in the audit log.
    let r = send(
        api.request(reqwest::Method::POST, "/api/v1/pools")
            .header("x-request-id", "e2e-trace-42")
            .json(&pool("traced", &["10.171.0.0/24"])),
    )
    .await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header("x-request-id"), Some("e2e-trace-42"));
    let audit = api.json("/api/v1/audit?limit=1").await;
    assert_eq!(audit["items"][0]["request_id"], "e2e-trace-42");
    assert_eq!(audit["items"][0]["path"], "/api/v1/pools");
    assert_eq!(audit["items"][0]["actor"], "admin (token e2e-admin)");
    assert!(audit["items"][0]["detail"].as_str().unwrap().starts_with("revision "), "{audit}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_the_data_dir_is_locked_while_running() {
    let mut app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("t", &["10.180.0.0/24"])).await.expect(StatusCode::CREATED);

    // A second appliance on the same data dir is refused.
    let data = app.data();
    let out = app.ws.cli(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--admin-http",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use by another portico process"), "{}", stderr(&out));

    app.signal("TERM");
    let status = app.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
    let log = app.ws.log();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");

    // Both admin listeners off is a configuration error, said plainly.
    let out = app.ws.cli(&["run", "--data-dir", data.to_str().unwrap(), "--admin-http", "off", "--admin-https", "off"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("both admin listeners are off"), "{}", stderr(&out));

    // SIGINT works the same, and the data is all there after either.
    app.start_again().await;
    let api = app.admin_token().await;
    assert_eq!(api.all("/api/v1/pools").await.len(), 1);
    app.signal("INT");
    assert_eq!(app.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn https_listener_uses_the_kept_self_signed_certificate() {
    let mut app = Appliance::start_with(Options { https: true, ..Options::default() }).await;
    let cert_path = app.data().join("tls/admin.crt");
    let key_path = app.data().join("tls/admin.key");
    let cert = std::fs::read(&cert_path).expect("admin.crt in DATA/tls");
    assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));
    let key_mode = std::fs::metadata(&key_path).expect("admin.key in DATA/tls").permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600, "the private key must be private");

    // A client that trusts exactly that certificate (and nothing else) can talk to the HTTPS listener.
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .cookie_store(true)
        .build()
        .unwrap();
    let r = read(
        pinned.get(format!("{}/healthz", app.https_base())).send().await.expect("HTTPS with the pinned certificate"),
    )
    .await;
    r.expect(StatusCode::OK);
    assert!(r.header("x-request-id").is_some());

    // The session cookie from HTTPS is Secure; from plain HTTP it is not (it would never come back).
    let login = json!({ "username": "admin", "password": ADMIN_PASSWORD });
    let r =
        read(pinned.post(format!("{}/api/v1/auth/login", app.https_base())).json(&login).send().await.unwrap()).await;
    r.expect(StatusCode::OK);
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let r = read(pinned.get(format!("{}/api/v1/auth/me", app.https_base())).send().await.unwrap()).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["username"], "admin");

    let plain = app.anonymous();
    let r = plain.post("/api/v1/auth/login", login).await;
    r.expect(StatusCode::OK);
    assert!(!r.header("set-cookie").unwrap().contains("Secure"), "{r:?}");

    // The certificate is kept across restarts, so browsers can pin it.
    app.restart().await;
    assert_eq!(std::fs::read(&cert_path).unwrap(), cert, "the certificate must not be regenerated");
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let r =
        read(pinned.get(format!("{}/readyz", app.https_base())).send().await.expect("same certificate after restart"))
            .await;
    r.expect(StatusCode::OK);
}

#[tokio::test]
async fn version_command_prints_the_version() {
    let ws = Workspace::new();
    let out = ws.cli(&["version"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), format!("portico {}", env!("CARGO_PKG_VERSION")));
    let out = ws.cli(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")), "{}", stdout(&out));
}

#[tokio::test]
async fn reset_password_gives_a_new_password_that_must_be_changed() {
    let mut app = Appliance::start().await;
    app.admin().await;
    let data = app.data();
    let data = data.to_str().unwrap();
    // Refused while the appliance runs.
    let out = app.ws.cli(&["admin", "reset-password", "admin", "--data-dir", data]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    app.stop().await;

    let out = app.ws.cli(&["admin", "reset-password", "nobody", "--data-dir", data]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no user is named 'nobody'"), "{}", stderr(&out));

    let out = app.ws.cli(&["admin", "reset-password", "admin", "--data-dir", data]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "only the password on standard output: {printed:?}");
    let password = lines[0].trim();
    assert!(password.len() >= 10, "{password:?}");

    app.start_again().await;
    let api = Api::new(app.base(), None, true);
    api.post("/api/v1/auth/login", json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = api.post("/api/v1/auth/login", json!({ "username": "admin", "password": password })).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["must_change_password"], true);
    api.get("/api/v1/pools").await.expect_problem(StatusCode::FORBIDDEN, "password-change-required");
    api.post("/api/v1/auth/password", json!({ "current_password": password, "new_password": "after-the-reset" }))
        .await
        .expect(StatusCode::NO_CONTENT);
    api.get("/api/v1/pools").await.expect(StatusCode::OK);
}
