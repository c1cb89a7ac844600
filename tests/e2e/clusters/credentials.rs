//! Credentials: rotation reconnects, and a credential is never shown, exported (unless asked for) or stored in
//! clear.

use super::*;
use std::path::Path;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Waits until the cluster makes requests with `user`'s token and is connected.
async fn wait_using(api: &Api, kube: &TestApiServer, user: &str) {
    eventually(20, &format!("requests as {user}"), || {
        kube.requests().iter().any(|r| r.user.as_deref() == Some(user) && r.code < 400).then_some(())
    })
    .await;
    wait_connected(api, "k1").await;
}

#[tokio::test]
async fn rotated_credentials_reconnect_and_are_never_shown_or_stored_in_clear() {
    let (mut app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let kube = kube_server().await;
    let first = kube.add_token("first", permissions::appliance());
    add_cluster(&api, "k1", &kube, &first, json!({})).await;
    kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    let vip = wait_vips(&kube, "default", "web", 1).await;
    wait_using(&api, &kube, "first").await;
    let web_status = "/api/v1/namespaces/default/services/web/status";

    // Rotation while the old token still works: the cluster reconnects with the new one, and the status of
    // what is already served is not touched (not cleared and written again).
    let second = kube.add_token("second", permissions::appliance());
    kube.clear_requests();
    let r = api.put("/api/v1/clusters/k1", json!({"name": "k1", "kubeconfig": kube.kubeconfig(&second)})).await;
    r.expect(StatusCode::OK);
    assert!(r.body.get("kubeconfig").is_none() && !r.text.contains(&second), "{r:?}");
    wait_using(&api, &kube, "second").await;
    kube.create("Service", Some("default"), lb_service("after-first", json!({}))).unwrap();
    wait_vips(&kube, "default", "after-first", 1).await;
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "web").unwrap()), vip);
    assert_eq!(kube.count_requests("PATCH", web_status), 0, "an unchanged status is never patched");
    let old_user = kube.requests().iter().filter(|r| r.user.as_deref() == Some("first")).count();

    // Rotation after the old token was revoked: the cluster shows the failure, then reconnects.
    kube.revoke_token(&second);
    kube.drop_watches();
    let status = poll(&api, "/api/v1/clusters/k1/status", "k1 failing with a revoked token", |s| {
        (s["connected"] == false).then(|| s.clone())
    })
    .await;
    let errors = status["errors"].to_string();
    assert!(errors.contains("401") || errors.contains("Unauthorized"), "{status}");
    let third = kube.add_token("third", permissions::appliance());
    let r = api.put("/api/v1/clusters/k1", json!({"name": "k1", "kubeconfig": kube.kubeconfig(&third)})).await;
    r.expect(StatusCode::OK);
    wait_using(&api, &kube, "third").await;
    kube.create("Service", Some("default"), lb_service("after-second", json!({}))).unwrap();
    wait_vips(&kube, "default", "after-second", 1).await;
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "web").unwrap()), vip);
    assert_eq!(allocated_to(&api, "cluster/k1/default/web").await, vip, "nothing was reallocated");
    assert_eq!(
        kube.requests().iter().filter(|r| r.user.as_deref() == Some("first")).count(),
        old_user,
        "the old connection is gone"
    );

    // The server + ca + token form works too.
    let other = kube_server().await;
    let direct = other.add_token("direct", permissions::appliance());
    let r = api
        .post("/api/v1/clusters", json!({"name": "k2", "server": other.url(), "ca": other.ca_pem(), "token": direct}))
        .await;
    r.expect(StatusCode::CREATED);
    assert!(r.body.get("token").is_none() && r.body["server"] == other.url().as_str(), "{r:?}");
    other.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    wait_vips(&other, "default", "web", 1).await;

    // Never shown: GET of one cluster, the list, the configuration document (JSON and YAML).
    let secrets = [first.as_str(), second.as_str(), third.as_str(), direct.as_str()];
    let shown = |text: &str| secrets.iter().find(|s| text.contains(**s)).map(|s| s.to_string());
    for path in [
        "/api/v1/clusters/k1",
        "/api/v1/clusters/k2",
        "/api/v1/clusters",
        "/api/v1/config",
        "/api/v1/config?format=yaml",
    ] {
        let r = api.get(path).await;
        r.expect(StatusCode::OK);
        assert_eq!(shown(&r.text), None, "{path}: {}", r.text);
        assert!(!r.text.contains("kubeconfig") && !r.text.contains("\"token\""), "{path}: {}", r.text);
    }
    let k1 = api.json("/api/v1/clusters/k1").await;
    assert_eq!(k1["lb_class"], "portico.io/lb");
    assert_eq!(k1["ingress_class_controller"], "portico.io/ingress");
    assert_eq!((k1["enabled"].clone(), k1["default_class"].clone()), (json!(true), json!(false)));

    // Revision diffs show that a credential changed, not the credential.
    let revisions = api.json("/api/v1/revisions?limit=100").await;
    let mut seen_redacted = false;
    for rev in revisions["items"].as_array().unwrap() {
        let n = rev["number"].as_u64().unwrap();
        let r = api.get(&format!("/api/v1/revisions/{n}?document=true")).await;
        r.expect(StatusCode::OK);
        assert_eq!(shown(&r.text), None, "revision {n}: {}", r.text);
        seen_redacted |= r.text.contains("<redacted>");
    }
    assert!(seen_redacted, "diffs mark credentials as <redacted>");

    // Exports: without credentials unless asked for, and only an admin may ask.
    let export = api.get("/api/v1/config/export").await;
    export.expect(StatusCode::OK);
    assert_eq!(shown(&export.text), None, "{}", export.text);
    let with = api.get("/api/v1/config/export?include_secrets=true").await;
    with.expect(StatusCode::OK);
    assert!(with.text.contains(&third) && with.text.contains(&direct), "{}", with.text);
    assert!(!with.text.contains(&first) && !with.text.contains(&second), "only the credentials in force");
    let admin = app.admin().await;
    let operator = app.token(&admin, "operator").await;
    operator.get("/api/v1/config/export").await.expect(StatusCode::OK);
    operator.get("/api/v1/config/export?include_secrets=true").await.expect(StatusCode::FORBIDDEN);

    // At rest: sealed, with the key in DATA/secrets.key (0600). Not in clear anywhere in the data dir.
    let key = app.data().join("secrets.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let db = std::fs::read(app.data().join("portico.db")).unwrap();
    assert!(!db.is_empty());
    for file in files(&app.data()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in secrets {
            assert!(!contains(&bytes, secret), "{secret} in clear in {}", file.display());
        }
    }

    // The offline export: the same rule.
    app.stop().await;
    let data = app.data();
    let out = app.ws.cli(&["config", "export", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    let text = crate::harness::stdout(&out);
    assert!(text.contains("k1"), "{text}");
    assert_eq!(shown(&text), None, "{text}");
    let out = app.ws.cli(&["config", "export", "--data-dir", data.to_str().unwrap(), "--include-secrets"]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    assert!(crate::harness::stdout(&out).contains(&third));
}
