//! Backend health as the proxy's active checks see it. Observed state: it feeds the snapshot (`BackendEntry::
//! health`), so the proxy, BGP/L2 `announce_when: healthy` and DNS all act on the same results.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use utoipa::ToSchema;

/// What the active checks say about one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    /// No check configured, or none has finished yet: the backend counts as healthy (a new endpoint takes
    /// traffic at once, as its readiness already says it can).
    #[default]
    Unchecked,
    Healthy,
    Unhealthy,
}

impl BackendHealth {
    /// Whether the backend may take traffic as far as health checks go.
    pub fn passes(self) -> bool {
        self != BackendHealth::Unhealthy
    }
}

/// A backend of a service: its address and its own port (`BackendEntry::ip` and `port`; Kubernetes endpoints
/// have no port of their own, static backends may share an address on different ports).
pub type BackendKey = (IpAddr, Option<u16>);

/// The checked state of one service's backends (one check per backend).
pub type ServiceHealth = Arc<BTreeMap<BackendKey, BackendHealth>>;

/// The checked state of every checked service, by service name (the snapshot's `ServiceEntry::name`).
pub type HealthMap = BTreeMap<String, ServiceHealth>;

/// Where health results go: the control plane's pipeline, which compiles them into the next snapshot.
pub trait HealthSink: Send + Sync + 'static {
    /// The results of `service` changed; `None` when it is no longer checked.
    fn set_health(&self, service: &str, health: Option<ServiceHealth>);
}

/// A sink that forgets (tests, and tools without a pipeline).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHealthSink;

impl HealthSink for NoHealthSink {
    fn set_health(&self, _service: &str, _health: Option<ServiceHealth>) {}
}
