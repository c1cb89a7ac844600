//! Which Kubernetes objects are ours, and what they ask for: pure functions from API objects to the model's
//! observed types.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use model::addr::Family;
use model::config::Protocol;
use model::ipam::Families;
use model::observed::{IngressRule, ObservedEndpoint, ObservedIngress, ObservedPort, ObservedService, ServicePortRef};
use model::proxy::{Affinity, ProxyPolicy};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub const ANNOTATION_IPS: &str = "portico.io/load-balancer-ips";
pub const ANNOTATION_POOL: &str = "portico.io/pool";
pub const ANNOTATION_SHARING: &str = "portico.io/sharing-key";
/// The proxy policy as JSON, the same object as a static service's `proxy` field.
pub const ANNOTATION_PROXY: &str = "portico.io/proxy";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_INGRESS_CLASS: &str = "kubernetes.io/ingress.class";

/// A cluster's rules for what is ours.
#[derive(Debug, Clone)]
pub struct Rules {
    pub lb_class: String,
    pub default_class: bool,
    pub ingress_controller: String,
}

/// A Service is ours when it is a LoadBalancer of our class (or of no class, when `default_class` is on).
pub fn claims_service(svc: &Service, rules: &Rules) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == rules.lb_class,
        None => rules.default_class,
    }
}

/// An Ingress is ours when its IngressClass (named, legacy annotation, or the default class) has our controller.
pub fn claims_ingress(ing: &Ingress, classes: &[&IngressClass], rules: &Rules) -> bool {
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_INGRESS_CLASS).cloned()));
    let class = match named {
        Some(name) => classes.iter().find(|c| c.metadata.name.as_deref() == Some(name.as_str())),
        None => classes.iter().find(|c| {
            c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                == Some("true")
        }),
    };
    class.and_then(|c| c.spec.as_ref()).and_then(|s| s.controller.as_deref()) == Some(rules.ingress_controller.as_str())
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

fn family(name: &str) -> Option<Family> {
    match name {
        "IPv4" => Some(Family::Ipv4),
        "IPv6" => Some(Family::Ipv6),
        _ => None,
    }
}

/// The slices that belong to a Service (same namespace, `kubernetes.io/service-name` label).
pub fn slices_of<'a>(svc: &Service, slices: impl Iterator<Item = &'a EndpointSlice>) -> Vec<&'a EndpointSlice> {
    let ns = svc.metadata.namespace.as_deref();
    let name = svc.metadata.name.as_deref();
    slices
        .filter(|s| {
            s.metadata.namespace.as_deref() == ns
                && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == name
        })
        .collect()
}

fn parse_ips<'a>(ips: impl Iterator<Item = Option<&'a str>>) -> Vec<IpAddr> {
    ips.filter_map(|ip| ip?.parse().ok()).collect()
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn service_status_ips(svc: &Service) -> Vec<IpAddr> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    parse_ips(ingress.into_iter().flatten().map(|i| i.ip.as_deref()))
}

/// The addresses in an Ingress's `status.loadBalancer.ingress`.
pub fn ingress_status_ips(ing: &Ingress) -> Vec<IpAddr> {
    let ingress = ing.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    parse_ips(ingress.into_iter().flatten().map(|i| i.ip.as_deref()))
}

/// What a claimed Service asks for, and its endpoints.
pub fn observe_service(cluster: &str, svc: &Service, slices: &[&EndpointSlice]) -> ObservedService {
    let meta = &svc.metadata;
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    let mut problems = Vec::new();

    let mut addresses: Vec<IpAddr> = Vec::new();
    let requested = annotations.get(ANNOTATION_IPS).cloned().or(spec.load_balancer_ip.clone());
    if let Some(text) = requested {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse() {
                Ok(ip) => addresses.push(ip),
                Err(_) => problems.push(format!("{ANNOTATION_IPS}: '{part}' is not an IP address")),
            }
        }
    }

    let families: Vec<Family> = spec.ip_families.iter().flatten().filter_map(|f| family(f)).collect();
    let families = match (spec.ip_family_policy.as_deref(), families.as_slice()) {
        (_, []) => Families::Any,
        (Some("RequireDualStack"), [primary, ..]) => Families::Dual { primary: *primary, required: true },
        (Some("PreferDualStack"), [primary, ..]) => Families::Dual { primary: *primary, required: false },
        (_, [only, ..]) => Families::Single(*only),
    };

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        match (protocol(p.protocol.as_deref()), u16::try_from(p.port)) {
            (Some(protocol), Ok(port)) => ports.push(ObservedPort { name: p.name.clone(), port, protocol }),
            _ => problems.push(format!(
                "port {} ({}) is not served: only TCP and UDP are",
                p.port,
                p.protocol.as_deref().unwrap_or("TCP")
            )),
        }
    }

    let mut endpoints = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports: model::observed::EndpointPorts = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().filter(|n| !n.is_empty()), port, protocol(p.protocol.as_deref())?))
            })
            .collect();
        for e in &slice.endpoints {
            let conditions = e.conditions.clone().unwrap_or_default();
            // The API: a missing `ready` means ready; a missing `serving` means the same as `ready`.
            let ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(ready);
            let terminating = conditions.terminating.unwrap_or(false);
            for address in &e.addresses {
                let Ok(ip) = address.parse() else { continue };
                endpoints.push(ObservedEndpoint {
                    ip,
                    ports: slice_ports.clone(),
                    ready,
                    serving,
                    terminating,
                    zone: e.zone.clone(),
                    node: e.node_name.clone(),
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    endpoints.dedup_by(|a, b| a.ip == b.ip);

    let status = service_status_ips(svc);
    let proxy = proxy_policy(&spec, annotations.get(ANNOTATION_PROXY).map(String::as_str), &mut problems);

    ObservedService {
        cluster: cluster.to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        created: meta
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        pool: annotations.get(ANNOTATION_POOL).cloned().filter(|p| !p.is_empty()),
        addresses,
        sharing_key: annotations.get(ANNOTATION_SHARING).cloned().filter(|k| !k.is_empty()),
        families,
        ports,
        endpoints,
        status,
        proxy,
        problems,
    }
}

/// The `portico.io/proxy` annotation, then the Service's own `sessionAffinity` (and its timeout) over it, as
/// kube-proxy would honour them; `None` when all is default. A bad annotation is reported and ignored.
fn proxy_policy(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    annotation: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<Arc<ProxyPolicy>> {
    let mut policy = match annotation.map(ProxyPolicy::from_json) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(why)) => {
            problems.push(format!("{ANNOTATION_PROXY}: {why}; the defaults apply"));
            None
        }
    };
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let p = policy.get_or_insert_with(ProxyPolicy::default);
        p.affinity = Affinity::ClientIp;
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=86_400).contains(t));
        if let Some(t) = timeout {
            p.affinity_timeout = t;
        }
    }
    policy.map(Arc::new)
}

fn port_ref(port: Option<&k8s_openapi::api::networking::v1::ServiceBackendPort>) -> Option<ServicePortRef> {
    let port = port?;
    match (&port.name, port.number) {
        (Some(name), _) if !name.is_empty() => Some(ServicePortRef::Name(name.clone())),
        (_, Some(n)) => u16::try_from(n).ok().map(ServicePortRef::Number),
        _ => None,
    }
}

pub fn observe_ingress(cluster: &str, ing: &Ingress) -> ObservedIngress {
    let spec = ing.spec.clone().unwrap_or_default();
    let mut rules = Vec::new();
    if let Some(backend) = spec.default_backend.as_ref().and_then(|b| b.service.as_ref())
        && let Some(port) = port_ref(backend.port.as_ref())
    {
        rules.push(IngressRule {
            host: None,
            path: None,
            path_type: "Prefix".into(),
            service: backend.name.clone(),
            port,
        });
    }
    for rule in spec.rules.iter().flatten() {
        for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
            let Some(service) = p.backend.service.as_ref() else { continue };
            let Some(port) = port_ref(service.port.as_ref()) else { continue };
            rules.push(IngressRule {
                host: rule.host.clone(),
                path: p.path.clone(),
                path_type: p.path_type.clone(),
                service: service.name.clone(),
                port,
            });
        }
    }
    let tls = spec
        .tls
        .iter()
        .flatten()
        .filter_map(|t| Some((t.hosts.clone().unwrap_or_default(), t.secret_name.clone()?)))
        .collect();
    let status = ingress_status_ips(ing);
    ObservedIngress {
        cluster: cluster.to_string(),
        namespace: ing.metadata.namespace.clone().unwrap_or_default(),
        name: ing.metadata.name.clone().unwrap_or_default(),
        status,
        rules,
        tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::proxy::Algorithm;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            lb_class: "portico.io/lb".into(),
            default_class: false,
            ingress_controller: "portico.io/ingress".into(),
        }
    }

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn claims_by_type_and_class() {
        let ours = service(
            json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb"}}),
        );
        let other =
            service(json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "x"}}));
        let classless = service(json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer"}}));
        let cluster_ip = service(
            json!({"metadata": {"name": "a"}, "spec": {"type": "ClusterIP", "loadBalancerClass": "portico.io/lb"}}),
        );
        assert!(claims_service(&ours, &rules()));
        assert!(!claims_service(&other, &rules()));
        assert!(!claims_service(&classless, &rules()));
        assert!(claims_service(&classless, &Rules { default_class: true, ..rules() }));
        assert!(!claims_service(&cluster_ip, &rules()));
    }

    #[test]
    fn reads_requests_families_ports_and_endpoints() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"tier": "front"},
                "creationTimestamp": "2026-11-27T06:00:00Z",
                "annotations": {"portico.io/load-balancer-ips": "192.0.2.7, 2001:db8::7, nope",
                                "portico.io/pool": "edge", "portico.io/sharing-key": "k"}},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                     "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "s", "port": 9, "protocol": "SCTP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7", "ipMode": "VIP"}]}}
        }));
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true}, "zone": "z1", "nodeName": "n1"},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.1.0.3"]}
            ]
        }))
        .unwrap();
        let other: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "other"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        let slices = slices_of(&svc, [&slice, &other].into_iter());
        assert_eq!(slices.len(), 1);
        let o = observe_service("c1", &svc, &slices);
        assert_eq!(o.owner(), "cluster/c1/shop/web");
        assert_eq!(o.addresses.len(), 2);
        assert_eq!(o.problems.len(), 2, "bad address and SCTP port: {:?}", o.problems);
        assert_eq!(o.pool.as_deref(), Some("edge"));
        assert_eq!(o.families, Families::Dual { primary: Family::Ipv6, required: true });
        assert_eq!(o.ports.len(), 2);
        assert_eq!(o.endpoints.len(), 3);
        assert!(o.endpoints[0].ready && o.endpoints[0].zone.as_deref() == Some("z1"));
        assert!(!o.endpoints[1].ready && o.endpoints[1].serving && o.endpoints[1].terminating);
        assert!(o.endpoints[2].ready, "missing conditions mean ready");
        assert_eq!(o.status, vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(o.created, "2026-11-27T06:00:00Z");
        let request = o.request();
        assert_eq!(request.sharing.map(|s| s.ports.len()), Some(2));
        assert_eq!(o.proxy, None, "no affinity, no annotation: the defaults");
    }

    #[test]
    fn proxy_policy_from_affinity_and_annotation() {
        let observe = |v: serde_json::Value| observe_service("c1", &service(v), &[]);
        let o = observe(json!({
            "metadata": {"name": "a", "annotations": {"portico.io/proxy": "{\"algorithm\": \"maglev\",
                \"health_check\": {\"kind\": \"http\", \"path\": \"/healthz\"}}"}},
            "spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}
        }));
        let p = o.proxy.unwrap_or_default();
        assert_eq!((p.algorithm, p.affinity, p.affinity_timeout), (Algorithm::Maglev, Affinity::ClientIp, 60));
        assert_eq!(p.health_check.as_ref().map(|c| c.path.clone()), Some("/healthz".to_string()));
        assert!(o.problems.is_empty(), "{:?}", o.problems);

        // Kubernetes' default timeout (10800 s) when the config is left out.
        let p = observe(json!({"metadata": {"name": "a"}, "spec": {"sessionAffinity": "ClientIP"}})).proxy;
        assert_eq!(p.map(|p| (p.affinity, p.affinity_timeout)), Some((Affinity::ClientIp, 10_800)));

        // A bad annotation is reported, naming the field, and the defaults apply.
        let o = observe(json!({
            "metadata": {"name": "a", "annotations": {"portico.io/proxy": "{\"idle_timeout\": 0}"}},
            "spec": {}
        }));
        assert_eq!(o.proxy, None);
        assert!(
            o.problems.iter().any(|p| p.contains("portico.io/proxy") && p.contains("idle_timeout")),
            "{:?}",
            o.problems
        );
    }

    #[test]
    fn ingress_classes() {
        let class: IngressClass = serde_json::from_value(
            json!({"metadata": {"name": "portico"}, "spec": {"controller": "portico.io/ingress"}}),
        )
        .unwrap();
        let default: IngressClass = serde_json::from_value(json!({"metadata": {"name": "nginx", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}, "spec": {"controller": "k8s.io/ingress-nginx"}})).unwrap();
        let named: Ingress =
            serde_json::from_value(json!({"metadata": {"name": "a"}, "spec": {"ingressClassName": "portico"}}))
                .unwrap();
        let unnamed: Ingress = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {}})).unwrap();
        let legacy: Ingress = serde_json::from_value(
            json!({"metadata": {"name": "c", "annotations": {"kubernetes.io/ingress.class": "portico"}}}),
        )
        .unwrap();
        let classes = [&class, &default];
        assert!(claims_ingress(&named, &classes, &rules()));
        assert!(!claims_ingress(&unnamed, &classes, &rules()), "the default class is nginx's");
        assert!(claims_ingress(&legacy, &classes, &rules()));
        let routed: Ingress = serde_json::from_value(json!({"metadata": {"name": "r", "namespace": "shop"}, "spec": {
        "ingressClassName": "portico",
        "tls": [{"hosts": ["shop.example"], "secretName": "shop-tls"}],
        "rules": [{"host": "shop.example", "http": {"paths": [
            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}}))
        .unwrap();
        let o = observe_ingress("c1", &routed);
        assert_eq!(o.rules.len(), 2);
        assert_eq!(o.rules[0].port, ServicePortRef::Name("http".into()));
        assert_eq!(o.tls, vec![(vec!["shop.example".to_string()], "shop-tls".to_string())]);
    }
}
