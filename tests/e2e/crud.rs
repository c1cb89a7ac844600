//! Pools, services and settings: create, read, list with pages, replace and delete with ETags, and every way
//! a request body can be wrong.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Create → get → stale PUT → PUT → stale DELETE → DELETE, for one kind of object.
async fn etag_cycle(api: &Api, list: &str, created: Value, mut changed: Value) {
    let name = created["name"].as_str().unwrap().to_string();
    let path = format!("/api/v1/{list}/{name}");

    let r = api.post(&format!("/api/v1/{list}"), created.clone()).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.header("location"), Some(path.as_str()), "{r:?}");
    let etag = r.etag();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "ETag {etag} must be quoted");
    assert_eq!(r.header("x-portico-revision"), Some(etag.trim_matches('"')), "ETag is the revision that wrote it");
    for (k, v) in created.as_object().unwrap() {
        assert_eq!(&r.body[k], v, "the created object echoes {k}: {r:?}");
    }

    // Creating it again is a conflict.
    api.post(&format!("/api/v1/{list}"), created.clone()).await.expect_problem(StatusCode::CONFLICT, "exists");

    let got = api.get(&path).await;
    got.expect(StatusCode::OK);
    assert_eq!(got.etag(), etag);
    assert_eq!(got.body, r.body);

    // A write that changes something else moves the revision on, but not this object's ETag.
    let other = api.post("/api/v1/pools", pool(&format!("{name}-other"), &[other_range(list)])).await;
    other.expect(StatusCode::CREATED);
    assert_eq!(api.get(&path).await.etag(), etag, "an unrelated change must not change the ETag");

    // Replace, based on an old version: refused.
    let stale = "\"1\"";
    let r = send(api.request(Method::PUT, &path).header("if-match", stale).json(&changed)).await;
    r.expect_problem(StatusCode::PRECONDITION_FAILED, "stale");
    assert_eq!(api.get(&path).await.body, got.body, "a refused PUT changes nothing");
    // An If-Match that is no ETag at all is a bad request naming the header.
    let r = send(api.request(Method::PUT, &path).header("if-match", "yesterday").json(&changed)).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["If-Match"]);

    // Replace, based on the current version: accepted, with a new ETag.
    let r = send(api.request(Method::PUT, &path).header("if-match", &etag).json(&changed)).await;
    r.expect(StatusCode::OK);
    let new_etag = r.etag();
    assert_ne!(new_etag, etag);
    let got = api.get(&path).await;
    assert_eq!(got.etag(), new_etag);
    for (k, v) in changed.as_object().unwrap() {
        assert_eq!(&got.body[k], v, "the replaced object has the new {k}: {got:?}");
    }
    // The old ETag is stale now.
    send(api.request(Method::PUT, &path).header("if-match", &etag).json(&changed))
        .await
        .expect_problem(StatusCode::PRECONDITION_FAILED, "stale");

    // PUT cannot rename.
    changed["name"] = json!("renamed");
    let r = api.put(&path, changed).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["name"]);

    // Delete: stale first, then current.
    send(api.request(Method::DELETE, &path).header("if-match", &etag))
        .await
        .expect_problem(StatusCode::PRECONDITION_FAILED, "stale");
    let r = send(api.request(Method::DELETE, &path).header("if-match", &new_etag)).await;
    r.expect(StatusCode::NO_CONTENT);
    assert!(r.text.is_empty(), "204 has no body: {r:?}");
    api.get(&path).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    api.delete(&path).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    // A PUT with If-Match on a deleted object is stale, not a silent create.
    send(api.request(Method::PUT, &path).header("if-match", &new_etag).json(&created))
        .await
        .expect_problem(StatusCode::PRECONDITION_FAILED, "stale");
    // A PUT without If-Match creates.
    let r = api.put(&path, created).await;
    r.expect(StatusCode::CREATED);
}

fn other_range(list: &str) -> &'static str {
    if list == "pools" { "10.200.1.0/24" } else { "10.200.2.0/24" }
}

#[tokio::test]
async fn pools_and_services_round_trip_with_etags() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    etag_cycle(
        &api,
        "pools",
        json!({ "name": "edge", "addresses": ["10.10.0.0/24"], "auto_assign": true }),
        json!({ "name": "edge", "addresses": ["10.10.0.0/24", "10.10.1.10-10.10.1.20"], "auto_assign": false }),
    )
    .await;
    etag_cycle(
        &api,
        "services",
        json!({ "name": "web", "pool": "edge", "ports": [{ "port": 443, "protocol": "tcp" }],
                "backends": [{ "address": "192.0.2.1:8443" }] }),
        json!({ "name": "web", "pool": "edge", "ports": [{ "name": "https", "port": 443, "protocol": "tcp" },
                { "name": "dns", "port": 53, "protocol": "udp" }],
                "backends": [{ "address": "192.0.2.1:8443", "weight": 3 }, { "address": "192.0.2.2" }] }),
    )
    .await;
}

#[tokio::test]
async fn lists_page_with_limit_cursor_and_prefix() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    let names = ["blue-1", "blue-2", "blue-3", "green-1", "green-2", "red-1", "red-2"];
    // Created out of order; lists are sorted by name.
    for (i, name) in names.iter().enumerate().rev() {
        api.post("/api/v1/pools", pool(name, &[&format!("10.30.{i}.0/24")])).await.expect(StatusCode::CREATED);
        api.post("/api/v1/services", service(name)).await.expect(StatusCode::CREATED);
    }
    for list in ["pools", "services"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let url = match &cursor {
                Some(c) => format!("/api/v1/{list}?limit=3&cursor={c}"),
                None => format!("/api/v1/{list}?limit=3"),
            };
            let page = api.json(&url).await;
            pages += 1;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 3, "{page}");
            seen.extend(items.iter().map(|i| i["name"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(items.len(), 3, "a page before the last one is full");
                    assert_eq!(c, items.last().unwrap()["name"], "the cursor is the last name of the page");
                    cursor = Some(c.to_string());
                }
                None => break,
            }
        }
        assert_eq!(seen, names, "{list}: every item once, in name order");
        assert_eq!(pages, 3);

        let page = api.json(&format!("/api/v1/{list}?prefix=green-")).await;
        let got: Vec<&str> = page["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(got, ["green-1", "green-2"]);
        assert!(page.get("next_cursor").is_none(), "{page}");
        let page = api.json(&format!("/api/v1/{list}?prefix=blue-&limit=2")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        let rest = api.json(&format!("/api/v1/{list}?prefix=blue-&limit=2&cursor=blue-2")).await;
        assert_eq!(rest["items"][0]["name"], "blue-3");
        assert_eq!(rest["items"].as_array().unwrap().len(), 1);

        // Bad parameters name themselves.
        for (query, field) in [("limit=0", "limit"), ("limit=5000", "limit"), ("limit=x", "limit"), ("colour=red", "")]
        {
            let r = api.get(&format!("/api/v1/{list}?{query}")).await;
            r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
            if field.is_empty() {
                assert!(r.text.contains("colour"), "{r:?}");
            } else {
                assert_eq!(r.fields(), [field], "{query}");
            }
        }
    }
}

#[tokio::test]
async fn malformed_bodies_are_refused_naming_the_field() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("main", &["10.40.0.0/24"])).await.expect(StatusCode::CREATED);
    let revision = app_revision(&api).await;

    // Unknown field.
    let mut body = service("web");
    body["colour"] = json!("red");
    let r = api.post("/api/v1/services", body).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["colour"]);
    assert!(r.message_for("colour").contains("unknown field"), "{r:?}");
    // Unknown nested field.
    let r = api.post("/api/v1/services", json!({ "name": "web", "ports": [{ "port": 80, "proto": "tcp" }] })).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["ports[0].proto"]);

    // Wrong types, with the path of the field.
    let r = api.post("/api/v1/services", json!({ "name": "web", "ports": [{ "port": "eighty" }] })).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["ports[0].port"]);
    let r = api.post("/api/v1/services", json!({ "name": "web", "ports": [{ "port": 70000 }] })).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["ports[0].port"]);
    let r = api.post("/api/v1/pools", json!({ "name": "p", "addresses": "10.0.0.0/8" })).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(r.fields(), ["addresses"]);
    // A missing required field.
    let r = api.post("/api/v1/services", json!({ "name": "web" })).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(r.text.contains("ports"), "{r:?}");
    // Not JSON at all, and trailing garbage.
    let r = send(api.request(Method::POST, "/api/v1/pools").header("content-type", "application/json").body("{")).await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    let r = send(
        api.request(Method::POST, "/api/v1/pools")
            .header("content-type", "application/json")
            .body(r#"{"name":"p","addresses":["10.1.0.0/24"]} {}"#),
    )
    .await;
    r.expect_problem(StatusCode::BAD_REQUEST, "bad-request");

    // Wrong media type.
    let r = send(
        api.request(Method::POST, "/api/v1/pools")
            .header("content-type", "text/plain")
            .body(pool("p", &["10.1.0.0/24"]).to_string()),
    )
    .await;
    r.expect_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    let r = send(api.request(Method::POST, "/api/v1/pools").body(pool("p", &["10.1.0.0/24"]).to_string())).await;
    r.expect_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

    // Over 1 MiB.
    let big = json!({ "name": "big", "addresses": vec!["10.50.0.1"; 100_000] });
    assert!(big.to_string().len() > 1024 * 1024);
    let r = api.post("/api/v1/pools", big).await;
    r.expect_problem(StatusCode::PAYLOAD_TOO_LARGE, "too-large");

    // Every bad field at once.
    let r = api
        .post(
            "/api/v1/services",
            json!({ "name": "Not_A_Label", "pool": "nowhere", "ports": [{ "port": 0 }],
                    "backends": [{ "address": "not-an-address" }] }),
        )
        .await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let mut fields = r.fields();
    fields.sort();
    assert_eq!(fields, ["backends[0].address", "name", "pool", "ports[0].port"], "{r:?}");
    assert!(r.message_for("pool").contains("nowhere"), "{r:?}");
    assert!(r.message_for("backends[0].address").contains("not-an-address"), "{r:?}");
    assert_eq!(r.body["detail"], "4 fields failed validation");

    let r =
        api.post("/api/v1/pools", json!({ "name": "two", "addresses": ["10.41.0.0/24", "bogus", "10.41.0.9"] })).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let mut fields = r.fields();
    fields.sort();
    assert_eq!(fields, ["addresses[1]", "addresses[2]"], "bad entry and overlap within the pool: {r:?}");

    // Pools must not overlap: the error names the field of the request and the other pool.
    let r = api.post("/api/v1/pools", pool("clash", &["10.40.0.128/25"])).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert!(r.fields().contains(&"addresses[0]".to_string()), "{r:?}");
    assert!(r.message_for("addresses[0]").contains("'main'"), "{r:?}");

    // None of that wrote anything.
    assert_eq!(app_revision(&api).await, revision);
    let pools = api.all("/api/v1/pools").await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(api.all("/api/v1/services").await.is_empty());
}

async fn app_revision(api: &Api) -> u64 {
    api.json("/api/v1/status").await["revision"].as_u64().unwrap()
}

#[tokio::test]
async fn settings_are_a_versioned_singleton() {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    let r = api.get("/api/v1/settings").await;
    r.expect(StatusCode::OK);
    let etag = r.etag();
    assert_eq!(r.body["admin"]["max_login_failures"], 5);
    assert_eq!(r.body["hostname"], "portico");

    let mut settings = r.body.clone();
    settings["hostname"] = json!("edge-1");
    settings["log_level"] = json!("debug");
    let r = send(api.request(Method::PUT, "/api/v1/settings").header("if-match", "\"999\"").json(&settings)).await;
    r.expect_problem(StatusCode::PRECONDITION_FAILED, "stale");
    let r = send(api.request(Method::PUT, "/api/v1/settings").header("if-match", &etag).json(&settings)).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["hostname"], "edge-1");
    assert_ne!(r.etag(), etag);

    settings["hostname"] = json!("bad host name");
    settings["admin"]["session_minutes"] = json!(1);
    let r = api.put("/api/v1/settings", settings).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let mut fields = r.fields();
    fields.sort();
    assert_eq!(fields, ["admin.session_minutes", "hostname"]);

    let r = api.delete("/api/v1/settings").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["hostname"], "portico");
    assert_eq!(api.json("/api/v1/settings").await["log_level"], "info");
}
