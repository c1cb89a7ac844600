//! PROXY protocol against real programs: nginx (`listen … proxy_protocol`) as the backend reports the client
//! and VIP addresses it was given, for v1 and v2; HAProxy in front (`send-proxy-v2`) hands the appliance a
//! header whose client address it passes on; a connection without the expected header is refused and counted.

use super::bed::*;
use crate::harness::eventually;
use crate::netns::{Link, try_run};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx in the root namespace on `addr:8080` with `proxy_protocol`, answering every request with what the
/// header said; killed on drop.
struct Nginx(Child);

impl Nginx {
    fn start(dir: &Path, addr: &str) -> Nginx {
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
               fastcgi_temp_path {d}/nginx-fcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
               server {{\n    listen {addr}:8080 proxy_protocol;\n\
                 location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port \
             vip=$proxy_protocol_server_addr:$proxy_protocol_server_port\\n\"; }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let log = std::fs::File::create(dir.join("nginx.out")).expect("nginx log");
        let child = Command::new("nginx")
            .args(["-e", &format!("{d}/nginx-error.log"), "-p", &d.to_string(), "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start nginx (apt-get install nginx)");
        // Listening once a connection is accepted.
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect((addr, 8080)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` from the client namespace, from source address `src`; its output, or why it failed.
fn curl(bed: &Bed, src: &str, url: &str) -> Result<String, String> {
    let mut cmd = bed.client_ns.command("curl");
    cmd.args(["-sS", "--max-time", "10", "--interface", src, url]);
    let out = try_run(&mut cmd);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_receives_the_client_address_by_v1_and_v2() {
    let bed = start_proxy_appliance(None).await;
    let link = Link::to_root(&bed.app_ns);
    let nginx_addr = link.a.v4.to_string();
    let _nginx = Nginx::start(bed.app.ws.path(), &nginx_addr);
    let backends = json!([{"address": format!("{nginx_addr}:8080")}]);
    for version in ["v1", "v2"] {
        let name = format!("pp-{version}");
        let vip = bed
            .create_service(tcp_service(&name, backends.clone(), json!({"proxy_protocol": {"send": version}})))
            .await;
        let src = client(7);
        let body = curl(&bed, &src, &format!("http://{vip}/")).unwrap_or_else(|e| panic!("curl via {version}: {e}"));
        assert!(body.starts_with(&format!("client={src}:")), "{version}: nginx saw {body}");
        assert!(body.trim_end().ends_with(&format!("vip={vip}:80")), "{version}: nginx saw {body}");
        bed.api.delete(&format!("/api/v1/services/{name}")).await.expect(reqwest::StatusCode::NO_CONTENT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_header_client_is_passed_on_and_a_missing_header_is_refused() {
    let bed = start_proxy_appliance(None).await;
    let link = Link::to_root(&bed.app_ns);
    let nginx_addr = link.a.v4.to_string();
    let _nginx = Nginx::start(bed.app.ws.path(), &nginx_addr);
    let proxy = json!({"proxy_protocol": {"send": "v1", "accept": true}});
    let vip =
        bed.create_service(tcp_service("behind", json!([{"address": format!("{nginx_addr}:8080")}]), proxy)).await;

    // HAProxy in the client namespace, in front of the VIP, sending a v2 header.
    let front = client(200);
    let cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend f\n  bind {front}:8000\n  default_backend b\nbackend b\n  server s {vip}:80 send-proxy-v2\n"
    );
    let dir = bed.app.ws.path();
    std::fs::write(dir.join("haproxy.cfg"), cfg).expect("write haproxy.cfg");
    let mut cmd = bed.client_ns.command("haproxy");
    cmd.args(["-db", "-f"]).arg(dir.join("haproxy.cfg"));
    let _haproxy = bed.client_ns.spawn(cmd, &dir.join("haproxy.log"));
    let src = client(9);
    let body = eventually(WAIT, "HAProxy up and the request through", || async {
        curl(&bed, &src, &format!("http://{front}:8000/")).ok()
    })
    .await;
    assert!(body.starts_with(&format!("client={src}:")), "the client HAProxy saw reaches nginx: {body}");

    // Straight to the VIP, without a header: refused, and counted.
    assert!(curl(&bed, &src, &format!("http://{vip}/")).is_err(), "a connection without a header is refused");
    let status = bed.api.json("/api/v1/proxy/status?service=behind").await;
    assert!(status["listeners"][0]["refused"]["proxy_header"].as_u64() >= Some(1), "{status}");
}
