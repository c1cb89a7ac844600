//! Export and import: offline with the command line between data dirs, and over HTTP.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Pools and services whose VIPs are not what a fresh allocation would give, so that keeping them shows.
async fn populate(api: &Api) {
    api.post("/api/v1/pools", pool("alpha", &["10.110.0.1-10.110.0.10"])).await.expect(StatusCode::CREATED);
    api.post(
        "/api/v1/pools",
        json!({ "name": "beta", "addresses": ["10.111.0.0/28", "fd00:111::/120"], "auto_assign": false }),
    )
    .await
    .expect(StatusCode::CREATED);
    for name in ["s1", "s2", "s3", "s4"] {
        api.post("/api/v1/services", service(name)).await.expect(StatusCode::CREATED);
    }
    // Holes: s1 and s3 gave their VIPs back, so s2 and s4 sit above the lowest free addresses.
    api.delete("/api/v1/services/s1").await.expect(StatusCode::NO_CONTENT);
    api.delete("/api/v1/services/s3").await.expect(StatusCode::NO_CONTENT);
    let mut pinned = service("pinned");
    pinned["addresses"] = json!(["10.111.0.7"]);
    api.post("/api/v1/services", pinned).await.expect(StatusCode::CREATED);
    let mut in_beta = service("in-beta");
    in_beta["pool"] = json!("beta");
    api.post("/api/v1/services", in_beta).await.expect(StatusCode::CREATED);
    api.put("/api/v1/settings", json!({ "hostname": "edge-7", "log_level": "warn" })).await.expect(StatusCode::OK);
}

fn vip(allocations: &[Value], owner: &str) -> String {
    allocations.iter().find(|a| a["owner"] == owner).unwrap()["address"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn offline_export_and_import_keep_config_and_vips() {
    let mut a = Appliance::start().await;
    let api = a.admin_token().await;
    populate(&api).await;
    let config = api.json("/api/v1/config").await;
    let allocations = api.all("/api/v1/allocations").await;
    assert_eq!(vip(&allocations, "service/s2"), "10.110.0.2");
    assert_eq!(vip(&allocations, "service/s4"), "10.110.0.4");
    assert_eq!(vip(&allocations, "service/pinned"), "10.111.0.7");
    assert_eq!(vip(&allocations, "service/in-beta"), "10.111.0.0");

    // The offline commands refuse to touch a data dir in use.
    let file = a.ws.path().join("export.json");
    let data = a.data();
    let out = a.ws.cli(&["config", "export", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success(), "export must refuse while the appliance runs");
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    assert!(!file.exists());

    a.stop().await;
    let out = a.ws.cli(&["config", "export", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(export["format"], "portico/v1");
    assert_eq!(export["config"], config);
    assert_eq!(export["allocations"], json!(allocations));
    assert!(!export.to_string().contains("password"), "no secrets in an export");
    // Also as YAML, and to standard output.
    let yaml_file = a.ws.path().join("export.yaml");
    let out = a.ws.cli(&["config", "export", yaml_file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from_yaml: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&yaml_file).unwrap()).unwrap();
    assert_eq!(from_yaml, export);
    let out = a.ws.cli(&["config", "export", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&out)).unwrap(), export);

    // Import into a brand-new data dir, then start an appliance on it.
    let b_ws = Workspace::new();
    let b_data = b_ws.data();
    let out =
        b_ws.cli(&["config", "import", file.to_str().unwrap(), "--dry-run", "--data-dir", b_data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("dry run"), "{}", stderr(&out));
    let out = b_ws.cli(&["config", "import", file.to_str().unwrap(), "--data-dir", b_data.to_str().unwrap()]);
    assert!(out.status.success(), "import failed: {}", stderr(&out));
    assert!(stderr(&out).contains("imported as revision 2"), "{}", stderr(&out));

    let b = Appliance::start_in(b_ws, Options::default()).await;
    let b_api = b.admin_token().await;
    assert_eq!(b_api.json("/api/v1/config").await, config, "same configuration");
    assert_eq!(b_api.all("/api/v1/allocations").await, allocations, "same VIPs");
    let revisions = b_api.json("/api/v1/revisions").await;
    let head = &revisions["items"][0];
    assert_eq!(head["number"], 2);
    assert_eq!(head["source"], "import");
    assert!(head["message"].as_str().unwrap().contains("export.json"), "{head}");
    // The dry run wrote nothing: there is the initial revision and the import, no more.
    assert_eq!(revisions["items"].as_array().unwrap().len(), 2);
    // The imported appliance allocates into the holes, not over kept VIPs.
    b_api.post("/api/v1/services", service("s5")).await.expect(StatusCode::CREATED);
    assert_eq!(vip(&b_api.all("/api/v1/allocations").await, "service/s5"), "10.110.0.1");
}

#[tokio::test]
async fn import_refuses_a_bad_file_and_changes_nothing() {
    let ws = Workspace::new();
    let data = ws.data();
    let bad = ws.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({ "format": "portico/v1", "config": { "pools": [pool("p", &["10.120.0.0/24"]), pool("q", &["10.120.0.128/25"])] } })
            .to_string(),
    )
    .unwrap();
    let out = ws.cli(&["config", "import", bad.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("overlaps") && err.contains("nothing was imported"), "{err}");

    let wrong_format = ws.path().join("wrong.json");
    std::fs::write(&wrong_format, json!({ "format": "portico/v9", "config": {} }).to_string()).unwrap();
    let out = ws.cli(&["config", "import", wrong_format.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("format"), "{}", stderr(&out));

    let not_json = ws.path().join("garbage.json");
    std::fs::write(&not_json, "this is not an export").unwrap();
    let out = ws.cli(&["config", "import", not_json.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a Portico export"), "{}", stderr(&out));

    // A bare configuration document (what GET /config returns) is accepted as well.
    let bare = ws.path().join("bare.yaml");
    std::fs::write(&bare, "pools:\n  - name: bare\n    addresses: [10.121.0.0/24]\n").unwrap();
    let out = ws.cli(&["config", "import", bare.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let app = Appliance::start_in(ws, Options::default()).await;
    let api = app.admin_token().await;
    let revisions = api.json("/api/v1/revisions").await;
    assert_eq!(revisions["items"].as_array().unwrap().len(), 2, "only the good import wrote a revision: {revisions}");
    let pools = api.all("/api/v1/pools").await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["name"], "bare");
}

#[tokio::test]
async fn export_and_import_over_http() {
    let a = Appliance::start().await;
    let a_api = a.admin_token().await;
    populate(&a_api).await;
    let r = a_api.get("/api/v1/config/export").await;
    r.expect(StatusCode::OK);
    let export = r.body.clone();
    assert_eq!(export["format"], "portico/v1");
    let r = a_api.get("/api/v1/config/export?format=yaml").await;
    assert_eq!(r.header("content-type"), Some("application/yaml"));
    assert_eq!(serde_yaml_ng::from_str::<Value>(&r.text).unwrap(), export);
    let config = a_api.json("/api/v1/config").await;
    let allocations = a_api.all("/api/v1/allocations").await;

    // A viewer may not export (it is the whole configuration) or import.
    let admin = a.admin().await;
    let viewer = a.token(&admin, "viewer").await;
    viewer.get("/api/v1/config/export").await.expect_problem(StatusCode::FORBIDDEN, "forbidden");

    let b = Appliance::start().await;
    let b_api = b.admin_token().await;
    let r = b_api.post("/api/v1/config/import?dry_run=true", export.clone()).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["dry_run"], true);
    assert!(!r.body["changes"].as_array().unwrap().is_empty());
    assert_eq!(b_api.json("/api/v1/config").await["pools"], json!([]), "a dry run imports nothing");

    let r = b_api.post("/api/v1/config/import", export.clone()).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["revision"]["source"], "import");
    assert_eq!(b_api.json("/api/v1/config").await, config);
    assert_eq!(b_api.all("/api/v1/allocations").await, allocations);
    let head = &b_api.json("/api/v1/revisions").await["items"][0];
    assert_eq!(head["source"], "import");
    assert_eq!(head["author"], "admin (token e2e-admin)");

    // A bad format is refused, naming the field.
    let mut wrong = export;
    wrong["format"] = json!("something/else");
    let r = b_api.post("/api/v1/config/import", wrong).await;
    r.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(r.fields(), ["format"]);
}
