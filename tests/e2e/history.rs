//! Revisions, diffs, rollback, whole-document apply (JSON and YAML, dry-run, all-or-nothing) and
//! commit-confirm.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn revisions(api: &Api) -> Vec<Value> {
    api.json("/api/v1/revisions").await["items"].as_array().unwrap().clone()
}

async fn head(api: &Api) -> Value {
    revisions(api).await.remove(0)
}

#[tokio::test]
async fn every_change_is_a_revision_with_author_source_message_and_diff() {
    let app = Appliance::start().await;
    let session = app.admin().await;
    let token = app.token(&session, "operator").await;

    let initial = revisions(&session).await;
    assert_eq!(initial.len(), 1, "{initial:?}");
    assert_eq!(initial[0]["number"], 1);
    assert_eq!(initial[0]["source"], "system");

    // Created with a message, from the UI.
    let r = send(
        session
            .request(Method::POST, "/api/v1/pools")
            .header("x-portico-message", "room for the web tier")
            .header("x-portico-source", "ui")
            .json(&pool("web", &["10.70.0.0/24"])),
    )
    .await;
    r.expect(StatusCode::CREATED);
    let list = revisions(&session).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["number"], 2);
    assert_eq!(list[0]["author"], "admin");
    assert_eq!(list[0]["source"], "ui");
    assert_eq!(list[0]["message"], "room for the web tier");

    // Modified through a token, without a message: the default message says what happened.
    token.put("/api/v1/pools/web", pool("web", &["10.70.0.0/24", "10.70.1.0/24"])).await.expect(StatusCode::OK);
    let list = revisions(&session).await;
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["author"], "admin (token e2e-operator)");
    assert_eq!(list[0]["source"], "api");
    assert_eq!(list[0]["message"], "replace pool 'web'");

    // A write that changes nothing writes no revision.
    token.put("/api/v1/pools/web", pool("web", &["10.70.0.0/24", "10.70.1.0/24"])).await.expect(StatusCode::OK);
    // A refused write neither.
    token.post("/api/v1/pools", pool("bad", &["nonsense"])).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(revisions(&session).await.len(), 3);

    token.delete("/api/v1/pools/web").await.expect(StatusCode::NO_CONTENT);
    let list = revisions(&session).await;
    assert_eq!(list.len(), 4);
    assert_eq!(list[0]["message"], "delete pool 'web'");
    let numbers: Vec<u64> = list.iter().map(|r| r["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [4, 3, 2, 1], "newest first");

    // The diffs.
    let added = session.json("/api/v1/revisions/2").await;
    assert_eq!(added["changes"].as_array().unwrap().len(), 1);
    let change = &added["changes"][0];
    assert_eq!(
        (change["kind"].as_str(), change["name"].as_str(), change["op"].as_str()),
        (Some("pool"), Some("web"), Some("added"))
    );
    assert_eq!(change["after"]["addresses"], json!(["10.70.0.0/24"]));
    assert!(change.get("before").is_none(), "{change}");
    assert!(added.get("document").is_none(), "the document only on request");

    let modified = session.json("/api/v1/revisions/3").await;
    let change = &modified["changes"][0];
    assert_eq!(change["op"], "modified");
    assert_eq!(change["before"]["addresses"], json!(["10.70.0.0/24"]));
    assert_eq!(change["after"]["addresses"], json!(["10.70.0.0/24", "10.70.1.0/24"]));
    assert_eq!(change["patch"], json!([{ "op": "add", "path": "/addresses/1", "value": "10.70.1.0/24" }]));

    let removed = session.json("/api/v1/revisions/4").await;
    let change = &removed["changes"][0];
    assert_eq!(change["op"], "removed");
    assert_eq!(change["before"]["name"], "web");
    assert!(change.get("after").is_none(), "{change}");

    // The whole document as of a revision.
    let doc = session.json("/api/v1/revisions/3?document=true").await;
    assert_eq!(doc["document"]["pools"][0]["addresses"], json!(["10.70.0.0/24", "10.70.1.0/24"]));
    assert_eq!(doc["number"], 3);
    let doc = session.json("/api/v1/revisions/1?document=true").await;
    assert_eq!(doc["document"]["pools"], json!([]));
    assert_eq!(doc["document"]["settings"]["hostname"], "portico");

    session.get("/api/v1/revisions/99").await.expect_problem(StatusCode::NOT_FOUND, "not-found");

    // Pages of revisions.
    let page = session.json("/api/v1/revisions?limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], "3");
    let page = session.json("/api/v1/revisions?limit=2&cursor=3").await;
    let numbers: Vec<u64> = page["items"].as_array().unwrap().iter().map(|r| r["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 1]);
}

#[tokio::test]
async fn rollback_restores_an_old_configuration_as_a_new_revision() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("one", &["10.80.0.0/24"])).await.expect(StatusCode::CREATED);
    api.post("/api/v1/services", service("s1")).await.expect(StatusCode::CREATED);
    let good = head(&api).await["number"].as_u64().unwrap();
    let good_config = api.json("/api/v1/config").await;
    let good_allocations = api.all("/api/v1/allocations").await;

    api.post("/api/v1/pools", pool("two", &["10.81.0.0/24"])).await.expect(StatusCode::CREATED);
    api.post("/api/v1/services", service("s2")).await.expect(StatusCode::CREATED);
    api.put("/api/v1/pools/one", pool("one", &["10.80.0.0/23"])).await.expect(StatusCode::OK);
    api.delete("/api/v1/services/s1").await.expect(StatusCode::NO_CONTENT);
    assert_ne!(api.json("/api/v1/config").await, good_config);

    // Dry run first: the diff, nothing written.
    let count = revisions(&api).await.len();
    let r = api.post(&format!("/api/v1/revisions/{good}/rollback?dry_run=true"), json!({})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["dry_run"], true);
    assert!(r.body.get("revision").is_none(), "{r:?}");
    let mut ops: Vec<String> = r.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!("{} {} {}", c["op"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["name"].as_str().unwrap())
        })
        .collect();
    ops.sort();
    assert_eq!(ops, ["added service s1", "modified pool one", "removed pool two", "removed service s2"]);
    assert_eq!(revisions(&api).await.len(), count);

    let r = send(
        api.request(Method::POST, &format!("/api/v1/revisions/{good}/rollback"))
            .header("x-portico-message", "back to the good one"),
    )
    .await;
    r.expect(StatusCode::OK);
    let new = &r.body["revision"];
    assert_eq!(new["rollback_of"], good);
    assert_eq!(new["message"], "back to the good one");
    let new_number = new["number"].as_u64().unwrap();
    assert_eq!(new_number as usize, count + 1);
    assert_eq!(r.header("x-portico-revision"), Some(new_number.to_string().as_str()));

    let list = revisions(&api).await;
    assert_eq!(list.len(), count + 1, "a rollback adds a revision and removes none");
    assert_eq!(list[0]["rollback_of"], good);
    assert_eq!(api.json("/api/v1/config").await, good_config);
    // s1 is back; it had to get a VIP again, and the one it had was free.
    assert_eq!(api.all("/api/v1/allocations").await, good_allocations);

    api.post("/api/v1/revisions/999/rollback", json!({})).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn whole_document_apply_is_all_or_nothing_with_dry_run_and_yaml() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("keep", &["10.90.0.0/24"])).await.expect(StatusCode::CREATED);

    let r = api.get("/api/v1/config").await;
    r.expect(StatusCode::OK);
    let original = r.body.clone();
    let etag = r.etag();
    let revision = api.json("/api/v1/status").await["revision"].as_u64().unwrap();
    assert_eq!(etag, format!("\"{revision}\""), "the document's ETag is the revision in force");

    let mut doc = original.clone();
    doc["pools"].as_array_mut().unwrap().push(pool("more", &["10.91.0.0/24"]));
    doc["services"] = json!([service("api")]);

    // Dry run: the changes, nothing written.
    let r = api.put("/api/v1/config?dry_run=true", doc.clone()).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["dry_run"], true);
    assert!(r.body.get("revision").is_none());
    let changes: Vec<(String, String)> = r.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["op"].as_str().unwrap().into(), c["name"].as_str().unwrap().into()))
        .collect();
    assert_eq!(changes, [("added".into(), "more".into()), ("added".into(), "api".into())]);
    assert_eq!(api.json("/api/v1/config").await, original);
    assert_eq!(api.json("/api/v1/status").await["revision"], revision);
    assert!(api.all("/api/v1/allocations").await.is_empty());

    // All or nothing: one bad object among good ones changes nothing, and every problem is reported.
    let mut bad = doc.clone();
    bad["pools"].as_array_mut().unwrap().push(pool("broken", &["10.92.0.0/33"]));
    bad["services"].as_array_mut().unwrap().push(json!({ "name": "svc2", "ports": [{ "port": 0 }] }));
    let r = api.put("/api/v1/config", bad).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let mut fields = r.fields();
    fields.sort();
    assert_eq!(fields, ["pools[2].addresses[0]", "services[1].ports[0].port"], "{r:?}");
    assert_eq!(api.json("/api/v1/config").await, original);
    assert_eq!(api.json("/api/v1/status").await["revision"], revision);

    // Stale If-Match.
    send(api.request(Method::PUT, "/api/v1/config").header("if-match", "\"1\"").json(&doc))
        .await
        .expect_problem(StatusCode::PRECONDITION_FAILED, "stale");

    // Applied for real, based on the current revision.
    let r = send(api.request(Method::PUT, "/api/v1/config").header("if-match", &etag).json(&doc)).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["dry_run"], false);
    assert_eq!(r.body["revision"]["number"], revision + 1);
    assert_eq!(r.body["revision"]["message"], "apply configuration document");
    let applied = api.json("/api/v1/config").await;
    assert_eq!(applied["pools"].as_array().unwrap().len(), 2);
    assert_eq!(applied["services"][0]["name"], "api");
    assert_eq!(api.all("/api/v1/allocations").await.len(), 1);
    // Applying the same document again changes nothing.
    let r = api.put("/api/v1/config", doc.clone()).await;
    r.expect(StatusCode::OK);
    assert!(r.body.get("revision").is_none(), "{r:?}");
    assert_eq!(r.body["changes"], json!([]));

    // YAML out.
    let r = api.get("/api/v1/config?format=yaml").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    assert!(r.text.contains("name: more"), "{}", r.text);
    let from_yaml: Value = serde_yaml_ng::from_str(&r.text).unwrap();
    assert_eq!(from_yaml, applied, "the YAML and JSON documents say the same");
    let r = send(api.request(Method::GET, "/api/v1/config").header("accept", "application/yaml")).await;
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    api.get("/api/v1/config?format=xml").await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");

    // YAML in.
    let yaml = "pools:\n  - name: yaml-pool\n    addresses: [10.93.0.0/24]\nservices: []\n";
    let r = send(
        api.request(Method::PUT, "/api/v1/config")
            .header("content-type", "application/yaml")
            .header("x-portico-message", "from yaml")
            .body(yaml),
    )
    .await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["revision"]["message"], "from yaml");
    let now = api.json("/api/v1/config").await;
    assert_eq!(now["pools"].as_array().unwrap().len(), 1);
    assert_eq!(now["pools"][0]["name"], "yaml-pool");
    assert_eq!(now["services"], json!([]));
    assert_eq!(now["settings"]["hostname"], "portico", "omitted settings are the defaults");
    // A YAML type error names the field too.
    let r = send(
        api.request(Method::PUT, "/api/v1/config")
            .header("content-type", "application/yaml")
            .body("pools:\n  - name: p\n    addresses: 7\n"),
    )
    .await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["pools[0].addresses"]);
}

async fn apply_with_confirm(api: &Api) -> (u64, Value) {
    let original = api.json("/api/v1/config").await;
    let before = api.json("/api/v1/status").await["revision"].as_u64().unwrap();
    let mut doc = original.clone();
    doc["pools"] = json!([pool("risky", &["10.95.0.0/24"])]);
    let r = api.put("/api/v1/config?confirm_within=10", doc).await;
    r.expect(StatusCode::OK);
    assert!(r.body["confirm_before"].is_string(), "{r:?}");
    assert_eq!(r.body["revision"]["number"], before + 1);
    assert_eq!(api.json("/api/v1/config").await["pools"][0]["name"], "risky");
    let status = api.json("/api/v1/status").await;
    assert_eq!(status["pending_confirm"]["revision"], before + 1);
    assert_eq!(status["pending_confirm"]["revert_to"], before);

    // While it is pending, other changes wait.
    let r = api.post("/api/v1/pools", pool("other", &["10.96.0.0/24"])).await;
    r.expect_problem(StatusCode::CONFLICT, "confirm-pending");
    api.put("/api/v1/config", original.clone()).await.expect_problem(StatusCode::CONFLICT, "confirm-pending");
    // A dry run still works.
    api.put("/api/v1/config?dry_run=true", original.clone()).await.expect(StatusCode::OK);
    (before, original)
}

#[tokio::test]
async fn unconfirmed_change_reverts_by_itself() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("base", &["10.94.0.0/24"])).await.expect(StatusCode::CREATED);
    api.put("/api/v1/config?confirm_within=5", json!({})).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    let (before, original) = apply_with_confirm(&api).await;

    let reverted = eventually(Duration::from_secs(30), "automatic revert", || {
        let api = api.clone();
        async move {
            let head = head(&api).await;
            (head["number"].as_u64() == Some(before + 2)).then_some(head)
        }
    })
    .await;
    assert_eq!(reverted["source"], "system");
    assert_eq!(reverted["author"], "system");
    assert_eq!(reverted["rollback_of"], before);
    assert!(reverted["message"].as_str().unwrap().contains("not confirmed"), "{reverted}");
    assert_eq!(api.json("/api/v1/config").await, original);
    assert!(api.json("/api/v1/status").await.get("pending_confirm").is_none());
    // Changes are accepted again, and there is nothing to confirm.
    api.post("/api/v1/config/confirm", json!({})).await.expect_problem(StatusCode::CONFLICT, "nothing-to-confirm");
    api.post("/api/v1/pools", pool("other", &["10.96.0.0/24"])).await.expect(StatusCode::CREATED);
}

#[tokio::test]
async fn confirmed_change_stays() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/config/confirm", json!({})).await.expect_problem(StatusCode::CONFLICT, "nothing-to-confirm");
    let (before, _) = apply_with_confirm(&api).await;

    let r = api.post("/api/v1/config/confirm", json!({})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["revision"], before + 1);
    assert!(api.json("/api/v1/status").await.get("pending_confirm").is_none());
    api.post("/api/v1/pools", pool("other", &["10.96.0.0/24"])).await.expect(StatusCode::CREATED);

    // Past the deadline, nothing was reverted.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let list = revisions(&api).await;
    assert_eq!(list[0]["number"], before + 2, "no revision after the confirmed one and ours: {list:#?}");
    assert!(list.iter().all(|r| r["source"] != "system" || r["number"] == 1), "{list:#?}");
    let pools: Vec<String> =
        api.all("/api/v1/pools").await.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(pools, ["other", "risky"]);
}
