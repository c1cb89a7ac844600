//! The admin listener's certificate: self-signed, generated on first start and kept in the data dir, so that
//! browsers can pin it across restarts.

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn admin_server_config(data_dir: &Path, hostname: &str) -> Result<ServerConfig> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("admin.crt");
    let key_path = dir.join("admin.key");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let names = vec![hostname.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        let generated = rcgen::generate_simple_self_signed(names).context("cannot generate the admin certificate")?;
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert_path, generated.cert.pem().as_bytes())?;
        tracing::info!(certificate = %cert_path.display(), "generated a self-signed admin certificate");
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read the key {}", key_path.display()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the admin certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
