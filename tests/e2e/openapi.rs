//! The OpenAPI document describes the API that is really served: every documented operation is routed, and
//! every endpoint the appliance must have is documented.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let app = Appliance::start().await;
    // The document is public (clients are generated from it).
    let r = app.anonymous().get("/api/v1/openapi.json").await;
    r.expect(StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let doc = r.body;
    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3.1"), "OpenAPI {version}");
    assert_eq!(doc["info"]["title"], "Portico");
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some(), "{}", doc["components"]);

    let paths = doc["paths"].as_object().expect("paths");
    let mut operations: Vec<(Method, String, Value)> = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let method = match method.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                "head" => Method::HEAD,
                "options" => Method::OPTIONS,
                _ => continue,
            };
            operations.push((method, path.clone(), op.clone()));
        }
    }

    // What the appliance must offer.
    let required: &[(&str, &str)] = &[
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/logout"),
        ("get", "/api/v1/auth/me"),
        ("post", "/api/v1/auth/password"),
        ("get", "/api/v1/tokens"),
        ("post", "/api/v1/tokens"),
        ("delete", "/api/v1/tokens/{id}"),
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users"),
        ("get", "/api/v1/pools"),
        ("post", "/api/v1/pools"),
        ("get", "/api/v1/pools/{name}"),
        ("put", "/api/v1/pools/{name}"),
        ("delete", "/api/v1/pools/{name}"),
        ("get", "/api/v1/services"),
        ("post", "/api/v1/services"),
        ("get", "/api/v1/services/{name}"),
        ("put", "/api/v1/services/{name}"),
        ("delete", "/api/v1/services/{name}"),
        ("get", "/api/v1/settings"),
        ("get", "/api/v1/proxy/status"),
        ("put", "/api/v1/settings"),
        ("get", "/api/v1/allocations"),
        ("get", "/api/v1/revisions"),
        ("get", "/api/v1/revisions/{number}"),
        ("post", "/api/v1/revisions/{number}/rollback"),
        ("get", "/api/v1/config"),
        ("put", "/api/v1/config"),
        ("post", "/api/v1/config/confirm"),
        ("get", "/api/v1/config/export"),
        ("post", "/api/v1/config/import"),
        ("get", "/api/v1/audit"),
        ("get", "/api/v1/status"),
        ("get", "/api/v1/healthz"),
        ("get", "/api/v1/readyz"),
        ("get", "/api/v1/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ];
    let missing: Vec<String> = required
        .iter()
        .filter(|(m, p)| paths.get(*p).and_then(|item| item.get(*m)).is_none())
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(missing.is_empty(), "not in the OpenAPI document: {missing:?}");

    // Every operation is documented with responses, and its path parameters are declared.
    for (method, path, op) in &operations {
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            let declared =
                op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
            assert!(declared, "{method} {path} does not declare its path parameter {name}");
        }
    }

    // Every documented operation is routed: called as an admin with dummy parameters and an empty body, it
    // never falls through to the "no such endpoint" answer (nor gets 405 Method Not Allowed).
    let api = app.admin_token().await;
    let mut checked = 0;
    for (method, path, _) in &operations {
        let concrete = fill_parameters(path);
        let mut request = api.request(method.clone(), &concrete);
        if *method == Method::POST || *method == Method::PUT || *method == Method::PATCH {
            request = request.json(&json!({}));
        }
        let r = send(request).await;
        assert_ne!(r.problem(), "no-route", "{method} {concrete} is documented but not routed: {r:?}");
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {concrete} is documented but not routed");
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {concrete}: {r:?}");
        checked += 1;
    }
    assert!(checked >= required.len(), "only {checked} operations checked");

    // And the fallback itself is a problem document.
    let r = api.get("/api/v1/no-such-thing").await;
    r.expect_problem(StatusCode::NOT_FOUND, "no-route");
    assert!(r.body["detail"].as_str().unwrap().contains("/api/v1/no-such-thing"), "{r:?}");
}

fn fill_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{number}" => "1".to_string(),
            s if s.starts_with('{') => "e2e-dummy".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}
