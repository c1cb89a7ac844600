//! POST /api/v1/clusters/{name}/test, and kubeconfigs the appliance cannot use.

use super::*;
use portico_test_apiserver::Permission;

#[tokio::test]
async fn connection_test_lists_missing_permissions_and_unreachable_servers() {
    let (app, api) = appliance_with_pools(&[]).await;
    let (kube, token) = connected_cluster(&api, "k1").await;

    let r = api.post("/api/v1/clusters/k1/test", json!({})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["reachable"], true, "{:?}", r.body);
    assert!(r.body["version"].as_str().is_some_and(|v| v.starts_with('v')), "{:?}", r.body);
    assert_eq!(r.body["missing"], json!([]), "{:?}", r.body);
    let checked: Vec<&str> = r.body["checked"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for p in ["list services", "watch services", "patch services/status", "watch discovery.k8s.io/endpointslices"] {
        assert!(checked.contains(&p), "{p} in {checked:?}");
    }
    assert!(r.body.get("error").is_none(), "{:?}", r.body);

    // Take two permissions away: exactly those two are missing.
    let mut fewer = permissions::appliance();
    let patch_status =
        |p: &Permission| p.verb == "patch" && p.resource == "services" && p.subresource.as_deref() == Some("status");
    let watch_secrets = |p: &Permission| p.verb == "watch" && p.resource == "secrets";
    fewer.retain(|p| !patch_status(p) && !watch_secrets(p));
    assert_eq!(fewer.len(), permissions::appliance().len() - 2);
    kube.set_permissions(&token, fewer);
    let r = api.post("/api/v1/clusters/k1/test", json!({})).await;
    assert_eq!(r.body["reachable"], true, "{:?}", r.body);
    assert_eq!(r.body["missing"], json!(["patch services/status", "watch secrets"]), "{:?}", r.body);
    // A namespace-only grant is not enough for what the appliance does across the cluster.
    let mut namespaced = permissions::appliance();
    namespaced.retain(|p| !(p.verb == "list" && p.resource == "nodes"));
    namespaced.push(Permission::new("list", "", "nodes").in_namespace("default"));
    kube.set_permissions(&token, namespaced);
    let r = api.post("/api/v1/clusters/k1/test", json!({})).await;
    assert_eq!(r.body["missing"], json!(["list nodes"]), "{:?}", r.body);
    kube.set_permissions(&token, permissions::appliance());
    let r = api.post("/api/v1/clusters/k1/test", json!({})).await;
    assert_eq!(r.body["missing"], json!([]), "{:?}", r.body);

    // A revoked token: reachable, but every check fails, with the reason.
    let spare = kube.add_token("spare", permissions::appliance());
    add_cluster(&api, "k3", &kube, &spare, json!({"lb_class": "example.com/none"})).await;
    kube.revoke_token(&spare);
    let r = api.post("/api/v1/clusters/k3/test", json!({})).await;
    assert_eq!(r.body["missing"].as_array().map(Vec::len), r.body["checked"].as_array().map(Vec::len), "{:?}", r.body);
    assert!(r.body["error"].as_str().is_some_and(|e| e.contains("401") || e.contains("Unauthorized")), "{:?}", r.body);

    // An API server that does not answer.
    let down = kube_server().await;
    let down_token = down.add_token("portico", permissions::appliance());
    add_cluster(&api, "k2", &down, &down_token, json!({})).await;
    down.stop_listening().await;
    let r = api.post("/api/v1/clusters/k2/test", json!({})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["reachable"], false, "{:?}", r.body);
    assert!(r.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", r.body);
    assert!(r.body.get("version").is_none(), "{:?}", r.body);
    let status = poll(&api, "/api/v1/clusters/k2/status", "k2 not connected with an error", |s| {
        (s["connected"] == false && s["errors"].as_object().is_some_and(|e| !e.is_empty())).then(|| s.clone())
    })
    .await;
    assert_eq!(status["enabled"], true);
    api.post("/api/v1/clusters/nope/test", json!({})).await.expect(StatusCode::NOT_FOUND);
    let viewer = app.token(&app.admin().await, "viewer").await;
    viewer.post("/api/v1/clusters/k1/test", json!({})).await.expect(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn kubeconfigs_needing_plugins_or_files_are_refused() {
    let (_app, api) = appliance_with_pools(&[]).await;
    let kube = kube_server().await;
    let token = kube.add_token("portico", permissions::appliance());
    let good = kube.kubeconfig(&token);
    let with_user = |user: &str| good.replace(&format!("    token: {token}\n"), user);

    let exec = with_user(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n      args: [eks, get-token]\n",
    );
    let r = api.post("/api/v1/clusters", json!({"name": "eks", "kubeconfig": exec})).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["kubeconfig"], "{r:?}");
    let message = r.message_for("kubeconfig");
    assert!(message.contains("exec") && message.contains("token"), "explains how to make a token one: {message}");

    let provider = with_user("    auth-provider:\n      name: oidc\n      config: {}\n");
    let r = api.post("/api/v1/clusters", json!({"name": "oidc", "kubeconfig": provider})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert!(r.message_for("kubeconfig").contains("auth-provider"), "{r:?}");

    let file = with_user("    token-file: /var/run/secrets/token\n");
    let r = api.post("/api/v1/clusters", json!({"name": "file", "kubeconfig": file})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.fields(), ["kubeconfig"], "{r:?}");

    // Nothing was stored; the good one is accepted.
    assert_eq!(api.json("/api/v1/clusters").await["items"], json!([]));
    api.post("/api/v1/clusters", json!({"name": "good", "kubeconfig": good})).await.expect(StatusCode::CREATED);
    // A PUT that swaps in a plugin kubeconfig is refused as well, and the stored one stays in force.
    let r = api.put("/api/v1/clusters/good", json!({"name": "good", "kubeconfig": exec})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.fields(), ["kubeconfig"], "{r:?}");
    wait_connected(&api, "good").await;
}
