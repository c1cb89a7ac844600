//! VIP allocation from pools, as seen through the API, and its persistence across restarts.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn vip_of(allocations: &[Value], service: &str) -> Option<String> {
    let owner = format!("service/{service}");
    allocations.iter().find(|a| a["owner"] == owner.as_str()).map(|a| a["address"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn vips_are_allocated_released_and_kept_across_restarts() {
    let mut app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("small", &["10.60.0.1-10.60.0.2"])).await.expect(StatusCode::CREATED);

    api.post("/api/v1/services", service("a")).await.expect(StatusCode::CREATED);
    api.post("/api/v1/services", service("b")).await.expect(StatusCode::CREATED);
    let allocations = api.all("/api/v1/allocations").await;
    assert_eq!(
        allocations,
        [
            json!({ "address": "10.60.0.1", "pool": "small", "owner": "service/a" }),
            json!({ "address": "10.60.0.2", "pool": "small", "owner": "service/b" }),
        ]
    );

    // The pool is full.
    let r = api.post("/api/v1/services", service("c")).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["pool"], "the field to set to get an address elsewhere");
    assert!(r.body["errors"][0]["message"].as_str().unwrap().contains("free address"), "{r:?}");
    let mut in_pool = service("c");
    in_pool["pool"] = json!("small");
    let r = api.post("/api/v1/services", in_pool).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["pool"]);
    assert!(r.message_for("pool").contains("'small' has no free address"), "{r:?}");

    // Explicit addresses: outside every pool, or taken.
    let mut outside = service("c");
    outside["addresses"] = json!(["10.99.0.1"]);
    let r = api.post("/api/v1/services", outside).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["addresses[0]"]);
    assert!(r.message_for("addresses[0]").contains("outside every pool"), "{r:?}");
    let mut taken = service("c");
    taken["addresses"] = json!(["10.60.0.1"]);
    let r = api.post("/api/v1/services", taken.clone()).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["addresses[0]"]);
    assert!(r.message_for("addresses[0]").contains("service/a"), "the error names the owner: {r:?}");

    // Filters.
    let only_b = api.json("/api/v1/allocations?owner=service/b").await;
    assert_eq!(only_b["items"].as_array().unwrap().len(), 1);
    assert_eq!(api.json("/api/v1/allocations?pool=nope").await["items"], json!([]));
    let page = api.json("/api/v1/allocations?limit=1").await;
    assert_eq!(page["next_cursor"], "10.60.0.1");
    let page = api.json("/api/v1/allocations?limit=1&cursor=10.60.0.1").await;
    assert_eq!(page["items"][0]["owner"], "service/b");

    // A pool that holds allocations cannot go away.
    let r = api.delete("/api/v1/pools/small").await;
    r.expect_problem(StatusCode::CONFLICT, "in-use");
    assert!(r.text.contains("service/a") && r.text.contains("service/b"), "{r:?}");
    // Nor shrink under them.
    let r = api.put("/api/v1/pools/small", pool("small", &["10.60.0.2"])).await;
    r.expect_problem(StatusCode::CONFLICT, "in-use");
    assert!(r.text.contains("10.60.0.1"), "{r:?}");

    // Deleting a service releases its VIP, and the next service gets it.
    api.delete("/api/v1/services/a").await.expect(StatusCode::NO_CONTENT);
    let allocations = api.all("/api/v1/allocations").await;
    assert_eq!(vip_of(&allocations, "a"), None);
    assert_eq!(allocations.len(), 1);
    let r = api.post("/api/v1/services", taken).await;
    r.expect(StatusCode::CREATED);
    let allocations = api.all("/api/v1/allocations").await;
    assert_eq!(vip_of(&allocations, "c").as_deref(), Some("10.60.0.1"));

    // A second pool, and services that keep their VIPs while other things change.
    api.post("/api/v1/pools", pool("big", &["10.61.0.0/24"])).await.expect(StatusCode::CREATED);
    for name in ["d", "e", "f"] {
        api.post("/api/v1/services", service(name)).await.expect(StatusCode::CREATED);
    }
    // Changing a service's ports keeps its VIP.
    let mut d = service("d");
    d["ports"] = json!([{ "port": 8080 }]);
    api.put("/api/v1/services/d", d).await.expect(StatusCode::OK);
    api.delete("/api/v1/services/e").await.expect(StatusCode::NO_CONTENT);

    let before = api.all("/api/v1/allocations").await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert_eq!(vip_of(&before, "d").as_deref(), Some("10.61.0.0"));
    assert_eq!(vip_of(&before, "f").as_deref(), Some("10.61.0.2"));
    let config_before = api.json("/api/v1/config").await;

    app.restart().await;
    let api = app.admin_token().await;
    assert_eq!(api.all("/api/v1/allocations").await, before, "VIPs must survive a restart");
    assert_eq!(api.json("/api/v1/config").await, config_before);
    let status = api.json("/api/v1/status").await;
    assert_eq!(status["allocations"], 4);
    // And the freed address is handed out again after the restart, without moving anyone.
    api.post("/api/v1/services", service("g")).await.expect(StatusCode::CREATED);
    let after = api.all("/api/v1/allocations").await;
    assert_eq!(vip_of(&after, "g").as_deref(), Some("10.61.0.1"));
    for a in &before {
        assert!(after.contains(a), "{a} moved: {after:?}");
    }
}
