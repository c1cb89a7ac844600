//! Crash safety and refusing bad databases: every acknowledged write survives `kill -9`; a corrupt or newer
//! database stops the start with a clear message and is left untouched.

use crate::harness::*;
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("bulk", &["10.130.0.0/16"])).await.expect(StatusCode::CREATED);

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut attempted = 0usize;
            for i in 0.. {
                let name = format!("w{w}-{i}");
                attempted += 1;
                let sent = api.request(reqwest::Method::POST, "/api/v1/services").json(&service(&name)).send().await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => acked.lock().unwrap().push(name),
                    Ok(r) => panic!("write {name} got {} before the kill", r.status()),
                    // The process is gone: the write may or may not have happened.
                    Err(_) => break,
                }
            }
            attempted
        }));
    }

    // Kill while the writers are busy.
    eventually(Duration::from_secs(60), "40 acknowledged writes", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 40).then_some(()) }
    })
    .await;
    app.kill9().await;
    let mut attempted = 0;
    for w in writers {
        attempted += tokio::time::timeout(Duration::from_secs(60), w).await.expect("writer ends").expect("writer");
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(attempted > acked.len(), "every writer ended on a failed write, not on its own");

    app.start_again().await;
    let api = app.admin_token().await;
    let services: BTreeSet<String> =
        api.all("/api/v1/services").await.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    let lost: Vec<&String> = acked.difference(&services).collect();
    assert!(lost.is_empty(), "acknowledged writes lost after kill -9: {lost:?}");
    // Whatever survived is whole: every service has its VIP and a revision.
    let allocations = api.all("/api/v1/allocations").await;
    assert_eq!(allocations.len(), services.len(), "one VIP per service");
    let revisions = api.json("/api/v1/revisions?limit=1").await;
    assert_eq!(revisions["items"][0]["number"].as_u64().unwrap() as usize, services.len() + 2);
    // And the appliance goes on working.
    api.post("/api/v1/services", service("after-crash")).await.expect(StatusCode::CREATED);
}

/// Starts `portico run` on a data dir that must be refused; returns its standard error.
fn refused_start(ws: &Workspace) -> String {
    let out = ws.cli(&[
        "run",
        "--data-dir",
        ws.data().to_str().unwrap(),
        "--admin-http",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-https",
        "off",
    ]);
    assert!(!out.status.success(), "portico must refuse to start; output:\n{}", stderr(&out));
    stderr(&out)
}

async fn stopped_appliance_with_data() -> Workspace {
    let mut app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", pool("p", &["10.140.0.0/24"])).await.expect(StatusCode::CREATED);
    for i in 0..20 {
        api.post("/api/v1/services", service(&format!("s{i}"))).await.expect(StatusCode::CREATED);
    }
    app.stop().await;
    app.into_workspace()
}

fn db(ws: &Workspace) -> std::path::PathBuf {
    ws.data().join("portico.db")
}

fn assert_untouched(path: &Path, before: &[u8]) {
    let after = std::fs::read(path).unwrap();
    assert!(after == before, "{} was modified by the refused start", path.display());
}

#[tokio::test]
async fn garbage_database_is_refused_and_left_alone() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.data()).unwrap();
    let garbage: Vec<u8> = (0..16384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(db(&ws), &garbage).unwrap();
    let err = refused_start(&ws);
    assert!(err.contains("corrupt"), "{err}");
    assert_untouched(&db(&ws), &garbage);
}

#[tokio::test]
async fn damaged_database_is_refused_and_left_alone() {
    let ws = stopped_appliance_with_data().await;
    let path = db(&ws);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"SQLite format 3\0"));

    // A broken header.
    let mut broken = bytes.clone();
    broken[..16].copy_from_slice(b"not a database!!");
    std::fs::write(&path, &broken).unwrap();
    let err = refused_start(&ws);
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("portico.db"), "the message names the file: {err}");
    assert_untouched(&path, &broken);

    // A damaged page in the middle of an intact file.
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let page = if page == 1 { 65536 } else { page };
    assert!(bytes.len() >= 3 * page, "the database has a few pages ({} bytes)", bytes.len());
    for b in &mut bytes[page..2 * page] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = refused_start(&ws);
    assert!(err.contains("corrupt"), "{err}");
    assert_untouched(&path, &bytes);
}

#[tokio::test]
async fn database_from_a_newer_version_is_refused() {
    if std::process::Command::new("sqlite3").arg("-version").output().is_err() {
        eprintln!("SKIPPED database_from_a_newer_version_is_refused: the sqlite3 command is not installed");
        return;
    }
    let ws = stopped_appliance_with_data().await;
    let path = db(&ws);
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
             VALUES (99999, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0);",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", stderr(&out));
    let before = std::fs::read(&path).unwrap();
    let err = refused_start(&ws);
    assert!(err.contains("newer"), "{err}");
    assert!(err.contains("99999"), "{err}");
    assert_untouched(&path, &before);
    // The offline commands refuse it as well.
    let out = ws.cli(&["config", "export", "--data-dir", ws.data().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("newer"), "{}", stderr(&out));
}
