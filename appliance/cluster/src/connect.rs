//! A kube client from a cluster's configuration: a kubeconfig (token or inline client certificate), or an API
//! server URL with its CA and a bearer token.

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use model::config::Cluster;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the cluster has no credentials")]
    NoCredentials,
    #[error("the kubeconfig cannot be used: {0}")]
    Kubeconfig(String),
    #[error("cannot build a client: {0}")]
    Client(String),
}

/// The kubeconfig for a cluster: its own, or one made from `server`, `ca` and `token`.
pub fn kubeconfig_text(cluster: &Cluster) -> Result<String, ConnectError> {
    if let Some(k) = &cluster.kubeconfig {
        return Ok(k.expose().to_string());
    }
    let (Some(server), Some(ca), Some(token)) = (&cluster.server, &cluster.ca, &cluster.token) else {
        return Err(ConnectError::NoCredentials);
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    // JSON is YAML: quoting through serde_json keeps any character in the values safe.
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "portico",
        "clusters": [{"name": "portico", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "portico", "user": {"token": token.expose()}}],
        "contexts": [{"name": "portico", "context": {"cluster": "portico", "user": "portico"}}],
    });
    Ok(doc.to_string())
}

pub async fn client(cluster: &Cluster) -> Result<kube::Client, ConnectError> {
    let text = kubeconfig_text(cluster)?;
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|e| ConnectError::Kubeconfig(e.to_string()))?;
    let options = KubeConfigOptions { context: cluster.context.clone(), ..KubeConfigOptions::default() };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| ConnectError::Kubeconfig(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    // Watches are long reads; kube ends them itself (`timeoutSeconds`), so only a dead peer is caught here.
    config.read_timeout = Some(Duration::from_secs(330));
    config.write_timeout = Some(Duration::from_secs(10));
    kube::Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))
}
