//! Ready-made permission sets.

use crate::auth::Permission;

/// Exactly what the Portico appliance needs in a cluster (keep it in step with `config/k8s/rbac.yaml`): list/watch
/// Services, EndpointSlices, Ingresses, IngressClasses, Nodes and Secrets; patch/update `services/status` and
/// `ingresses/status`; create/patch Events (core and events.k8s.io).
pub fn appliance() -> Vec<Permission> {
    let mut out = Vec::new();
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
        ("", "nodes"),
        ("", "secrets"),
    ] {
        for verb in ["list", "watch"] {
            out.push(Permission::new(verb, group, resource));
        }
    }
    for (group, resource) in [("", "services/status"), ("networking.k8s.io", "ingresses/status")] {
        for verb in ["patch", "update"] {
            out.push(Permission::new(verb, group, resource));
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            out.push(Permission::new(verb, group, "events"));
        }
    }
    out
}

/// Every verb on every resource (cluster-admin).
pub fn admin() -> Vec<Permission> {
    vec![Permission::all()]
}

/// Read-only access (get, list, watch) to everything.
pub fn read_only() -> Vec<Permission> {
    ["get", "list", "watch"].iter().map(|v| Permission::new(v, "*", "*").with_any_subresource()).collect()
}
