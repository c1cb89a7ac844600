//! Ready-made permission sets.

use crate::auth::Permission;

/// What the Portico appliance needs in a cluster: list/watch Services, EndpointSlices, Ingresses, IngressClasses,
/// Nodes and Secrets; get/patch/update `services/status` and `ingresses/status`; create/patch Events (both APIs).
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
        for verb in ["get", "list", "watch"] {
            out.push(Permission::new(verb, group, resource));
        }
    }
    for (group, resource) in [("", "services/status"), ("networking.k8s.io", "ingresses/status")] {
        for verb in ["get", "patch", "update"] {
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
