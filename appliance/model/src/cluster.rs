//! Configuration of connected Kubernetes clusters and of services spread over several clusters.

use crate::names::dns_label_problem;
use crate::validation::Collector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use utoipa::ToSchema;

/// A credential: stored sealed, never shown by GET, never exported unless asked for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A Kubernetes cluster the appliance pulls from: by `kubeconfig`, or by `server` + `ca` + `token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// A kubeconfig (YAML). Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kubeconfig: Option<Secret>,
    /// The kubeconfig context to use (default: its current-context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// API server URL (`https://…`), with `ca` and `token` instead of a kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The API server's CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A bearer token (a ServiceAccount token). Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub token: Option<Secret>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Services whose `spec.loadBalancerClass` is this are ours.
    #[serde(default = "default_lb_class")]
    pub lb_class: String,
    /// Also claim LoadBalancer Services without `spec.loadBalancerClass`.
    #[serde(default)]
    pub default_class: bool,
    /// Ingresses whose IngressClass has this `spec.controller` are ours.
    #[serde(default = "default_ingress_controller")]
    pub ingress_class_controller: String,
}

pub const DEFAULT_LB_CLASS: &str = "portico.io/lb";
pub const DEFAULT_INGRESS_CONTROLLER: &str = "portico.io/ingress";

fn yes() -> bool {
    true
}
fn default_lb_class() -> String {
    DEFAULT_LB_CLASS.into()
}
fn default_ingress_controller() -> String {
    DEFAULT_INGRESS_CONTROLLER.into()
}

/// One VIP in front of Services of several clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalService {
    pub name: String,
    /// Allocate the VIP from this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Use exactly these VIPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub members: Vec<GlobalMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalMember {
    pub cluster: String,
    pub namespace: String,
    pub service: String,
    /// Share of traffic among members of the same priority (1 to 256, default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Lower is preferred; a member with no ready endpoints fails over to the next priority.
    #[serde(default)]
    pub priority: u32,
}

fn one() -> u32 {
    1
}

/// The parts of a kubeconfig the appliance reads; everything else is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(default)]
    pub clusters: Vec<Named<KubeCluster>>,
    #[serde(default)]
    pub users: Vec<Named<KubeUser>>,
    #[serde(default)]
    pub contexts: Vec<Named<KubeContext>>,
    #[serde(default)]
    pub current_context: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Named<T> {
    pub name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    pub item: Option<T>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KubeCluster {
    pub server: Option<String>,
    pub certificate_authority_data: Option<String>,
    pub certificate_authority: Option<String>,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KubeUser {
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub client_certificate_data: Option<String>,
    pub client_key_data: Option<String>,
    pub client_certificate: Option<String>,
    pub exec: Option<serde_yaml_ng::Value>,
    pub auth_provider: Option<serde_yaml_ng::Value>,
    pub username: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubeContext {
    pub cluster: String,
    pub user: String,
}

const TOKEN_HOWTO: &str = "the appliance cannot run credential plugins; make a ServiceAccount token kubeconfig \
                           (docs/clusters.md, config/k8s/rbac.yaml)";

impl Kubeconfig {
    pub fn parse(text: &str) -> Result<Kubeconfig, String> {
        serde_yaml_ng::from_str(text).map_err(|e| format!("is not a kubeconfig: {e}"))
    }

    /// The cluster and user of a context (or of the current context), checked for what the appliance can
    /// use: an https server, inline CA data (no files), and a token or inline client certificate.
    pub fn resolve(&self, context: Option<&str>) -> Result<(KubeCluster, KubeUser), String> {
        let name = context.or(self.current_context.as_deref()).ok_or("has no current-context; set `context`")?;
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.item.clone())
            .ok_or_else(|| format!("has no context '{name}'"))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.item.clone())
            .ok_or_else(|| format!("context '{name}' names cluster '{}', which it does not define", ctx.cluster))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == ctx.user)
            .and_then(|u| u.item.clone())
            .ok_or_else(|| format!("context '{name}' names user '{}', which it does not define", ctx.user))?;
        if user.exec.is_some() {
            return Err(format!("user '{}' uses an exec credential plugin: {TOKEN_HOWTO}", ctx.user));
        }
        if user.auth_provider.is_some() {
            return Err(format!("user '{}' uses an auth-provider plugin: {TOKEN_HOWTO}", ctx.user));
        }
        if user.token_file.is_some() || user.client_certificate.is_some() {
            return Err(format!("user '{}' refers to files; inline them (token, client-certificate-data)", ctx.user));
        }
        if user.token.is_none() && user.client_certificate_data.is_none() {
            return Err(format!("user '{}' has neither a token nor client-certificate-data: {TOKEN_HOWTO}", ctx.user));
        }
        if cluster.certificate_authority.is_some() {
            return Err(format!("cluster '{}' refers to a CA file; use certificate-authority-data", ctx.cluster));
        }
        match &cluster.server {
            Some(s) if s.starts_with("https://") => {}
            Some(s) => return Err(format!("cluster '{}' server '{s}' must be an https:// URL", ctx.cluster)),
            None => return Err(format!("cluster '{}' has no server", ctx.cluster)),
        }
        Ok((cluster, user))
    }
}

impl Cluster {
    pub fn validate(&self, c: &mut Collector<'_>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        match (&self.kubeconfig, &self.server, &self.token) {
            (Some(kubeconfig), None, None) => {
                if self.ca.is_some() {
                    c.error("ca", "comes from the kubeconfig; give it only with `server` and `token`");
                }
                match Kubeconfig::parse(kubeconfig.expose()).and_then(|k| k.resolve(self.context.as_deref())) {
                    Ok(_) => {}
                    Err(e) => c.error("kubeconfig", e),
                }
            }
            (None, Some(server), Some(token)) => {
                if self.context.is_some() {
                    c.error("context", "applies only to a kubeconfig");
                }
                if !server.starts_with("https://") || server.len() <= "https://".len() {
                    c.error("server", format!("'{server}' must be an https:// URL"));
                }
                if token.expose().trim().is_empty() || token.expose().chars().any(char::is_whitespace) {
                    c.error("token", "must be a bearer token (no spaces)");
                }
                match &self.ca {
                    None => c.error("ca", "the API server's CA certificate (PEM) is required with `server`"),
                    Some(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                        c.error("ca", "must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
                    }
                    Some(_) => {}
                }
            }
            (Some(_), _, _) => {
                c.error("kubeconfig", "give either `kubeconfig`, or `server` + `ca` + `token`, not both")
            }
            (None, None, None) => {
                c.error("kubeconfig", "credentials are required: `kubeconfig`, or `server` + `ca` + `token`")
            }
            (None, None, Some(_)) => c.error("server", "is required with `token`"),
            (None, Some(_), None) => c.error("token", "is required with `server`"),
        }
        if self.lb_class.is_empty() || self.lb_class.len() > 253 {
            c.error("lb_class", "must be 1 to 253 characters");
        }
        if self.ingress_class_controller.is_empty() || self.ingress_class_controller.len() > 253 {
            c.error("ingress_class_controller", "must be 1 to 253 characters");
        }
    }

    /// Whether the caller gave any credential (then absent ones are meant absent, not "keep").
    pub fn has_credentials(&self) -> bool {
        self.kubeconfig.is_some() || self.token.is_some()
    }

    /// The cluster without its secrets, for GET responses and exports.
    pub fn redacted(&self) -> Cluster {
        Cluster { kubeconfig: None, token: None, ..self.clone() }
    }
}

impl GlobalService {
    pub fn validate(&self, c: &mut Collector<'_>, clusters: &HashSet<&str>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        if self.pool.is_some() && !self.addresses.is_empty() {
            c.error("addresses", "give either `pool` or explicit `addresses`, not both");
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if a.parse::<std::net::IpAddr>().is_err() {
                c.error(&format!("addresses[{i}]"), format!("'{a}' is not an IP address"));
            }
        }
        if self.members.is_empty() {
            c.error("members", "must list at least one member Service");
        }
        let mut seen: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            let f = format!("members[{i}]");
            if !clusters.contains(m.cluster.as_str()) {
                c.error(&format!("{f}.cluster"), format!("no cluster is named '{}'", m.cluster));
            }
            if let Some(p) = dns_label_problem(&m.namespace) {
                c.error(&format!("{f}.namespace"), p);
            }
            if let Some(p) = dns_label_problem(&m.service) {
                c.error(&format!("{f}.service"), p);
            }
            if !(1..=256).contains(&m.weight) {
                c.error(&format!("{f}.weight"), "must be 1 to 256");
            }
            if let Some(j) = seen.insert((&m.cluster, &m.namespace, &m.service), i) {
                c.error(&f, format!("same Service as members[{j}]"));
            }
        }
    }
}

/// Keeps the stored credentials of clusters whose new version gives none (GET omits them, so a GET → PUT
/// round trip must not erase them).
pub fn carry_credentials(old: &[Cluster], new: &mut [Cluster]) {
    for cluster in new.iter_mut().filter(|c| !c.has_credentials()) {
        if let Some(prev) = old.iter().find(|o| o.name == cluster.name) {
            cluster.kubeconfig = prev.kubeconfig.clone();
            cluster.token = prev.token.clone();
            if cluster.server.is_none() && cluster.kubeconfig.is_none() {
                cluster.server = prev.server.clone();
            }
        }
    }
}

/// What `GET /api/v1/clusters/{name}/status` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct ClusterStatus {
    pub name: String,
    pub enabled: bool,
    /// Every watch is established.
    pub connected: bool,
    /// When `connected` last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When a complete list of every watched kind last arrived (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// Objects seen, by kind (`services`, `endpointslices`, `ingresses`, `ingressclasses`, `nodes`, `secrets`).
    pub objects: BTreeMap<String, usize>,
    /// LoadBalancer Services and Ingresses that are ours.
    pub claimed_services: usize,
    pub claimed_ingresses: usize,
    /// The last error of each watched kind, cleared when its watch recovers.
    pub errors: BTreeMap<String, String>,
}

/// What `POST /api/v1/clusters/{name}/test` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct ClusterTest {
    pub reachable: bool,
    /// The API server's version (`gitVersion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Permissions checked with SelfSubjectAccessReview.
    pub checked: Vec<String>,
    /// Those the credentials lack, like `watch services` or `patch services/status`.
    pub missing: Vec<String>,
}

/// One permission the appliance needs in a cluster: (verb, API group, resource, subresource).
pub type Permission = (&'static str, &'static str, &'static str, &'static str);

/// Exactly what the appliance does in a cluster (config/k8s/rbac.yaml grants these and nothing more).
pub const REQUIRED_PERMISSIONS: &[Permission] = &[
    ("list", "", "services", ""),
    ("watch", "", "services", ""),
    ("patch", "", "services", "status"),
    ("list", "discovery.k8s.io", "endpointslices", ""),
    ("watch", "discovery.k8s.io", "endpointslices", ""),
    ("list", "networking.k8s.io", "ingresses", ""),
    ("watch", "networking.k8s.io", "ingresses", ""),
    ("patch", "networking.k8s.io", "ingresses", "status"),
    ("list", "networking.k8s.io", "ingressclasses", ""),
    ("watch", "networking.k8s.io", "ingressclasses", ""),
    ("list", "", "nodes", ""),
    ("watch", "", "nodes", ""),
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("create", "events.k8s.io", "events", ""),
    ("patch", "events.k8s.io", "events", ""),
];

/// `watch services`, `patch services/status`, `create events.k8s.io/events`.
pub fn permission_name(p: &Permission) -> String {
    let (verb, group, resource, sub) = p;
    let group = if group.is_empty() { String::new() } else { format!("{group}/") };
    let sub = if sub.is_empty() { String::new() } else { format!("/{sub}") };
    format!("{verb} {group}{resource}{sub}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: edge
clusters:
- name: c
  cluster: { server: "https://10.0.0.1:6443", certificate-authority-data: "AAAA" }
users:
- name: sa
  user: { token: "abc" }
- name: plugin
  user:
    exec: { command: aws, apiVersion: client.authentication.k8s.io/v1 }
contexts:
- name: edge
  context: { cluster: c, user: sa }
- name: cloud
  context: { cluster: c, user: plugin }
"#;

    fn cluster() -> Cluster {
        Cluster {
            name: "edge".into(),
            kubeconfig: Some(Secret(KUBECONFIG.into())),
            context: None,
            server: None,
            ca: None,
            token: None,
            enabled: true,
            lb_class: DEFAULT_LB_CLASS.into(),
            default_class: false,
            ingress_class_controller: DEFAULT_INGRESS_CONTROLLER.into(),
        }
    }

    fn errors(c: &Cluster) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        c.validate(&mut Collector::new(&mut errs));
        errs.into_iter().map(|e| (e.field, e.message)).collect()
    }

    #[test]
    fn kubeconfig_with_token_is_accepted_and_plugins_are_refused_with_advice() {
        assert!(errors(&cluster()).is_empty());
        let plugin = Cluster { context: Some("cloud".into()), ..cluster() };
        let e = errors(&plugin);
        assert_eq!(e[0].0, "kubeconfig");
        assert!(e[0].1.contains("exec credential plugin") && e[0].1.contains("docs/clusters.md"), "{e:?}");
        let missing = Cluster { context: Some("nope".into()), ..cluster() };
        assert!(errors(&missing)[0].1.contains("no context 'nope'"));
        let garbage = Cluster { kubeconfig: Some(Secret(": : :".into())), ..cluster() };
        assert!(errors(&garbage)[0].1.contains("not a kubeconfig"));
    }

    #[test]
    fn server_token_form_and_mixtures() {
        let direct = Cluster {
            kubeconfig: None,
            server: Some("https://k:6443".into()),
            ca: Some("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----".into()),
            token: Some(Secret("t0k".into())),
            ..cluster()
        };
        assert!(errors(&direct).is_empty());
        let both = Cluster { kubeconfig: Some(Secret(KUBECONFIG.into())), ..direct.clone() };
        assert_eq!(errors(&both)[0].0, "kubeconfig");
        let http = Cluster { server: Some("http://k".into()), ca: None, ..direct.clone() };
        let fields: Vec<_> = errors(&http).into_iter().map(|e| e.0).collect();
        assert_eq!(fields, ["server", "ca"]);
        let none = Cluster { kubeconfig: None, ..cluster() };
        assert_eq!(errors(&none)[0].0, "kubeconfig");
    }

    #[test]
    fn credentials_are_carried_over_and_redacted() {
        let old = vec![cluster()];
        let mut new = vec![cluster().redacted()];
        assert!(new[0].kubeconfig.is_none());
        carry_credentials(&old, &mut new);
        assert_eq!(new[0], old[0]);
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }
}
