//! Validation and defaulting, per kind, following the real server's rules for the fields our clients use.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::selector::{label_value_errors, qualified_name_errors};
use crate::status::FieldError;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(label_ok) {
        errs.push(SUBDOMAIN_MSG.to_string());
    }
    errs
}

pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !label_ok(s) {
        errs.push(LABEL_MSG.to_string());
    }
    errs
}

pub fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !label_ok(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        errs.push(DNS1035_MSG.to_string());
    }
    errs
}

/// The rule a kind's names follow.
pub fn name_errors(kind: &Kind, name: &str) -> Vec<String> {
    match kind.plural {
        "services" => dns1035_label_errors(name),
        "namespaces" => dns1123_label_errors(name),
        _ => dns1123_subdomain_errors(name),
    }
}

/// Errors in a path segment name (`GET /api/v1/namespaces/ns/services/NAME`): the real server refuses names that
/// cannot be a path segment.
pub fn path_segment_error(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return Some(format!("may not contain '{bad}'"));
        }
    }
    None
}

fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// `ObjectMeta` rules: name, namespace, labels, annotations.
pub fn object_meta(kind: &Kind, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = s(obj, "/metadata/name").unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name", "name or generateName is required"));
    } else {
        for e in name_errors(kind, name) {
            errs.push(FieldError::invalid("metadata.name", json!(name), e));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for e in qualified_name_errors(k) {
                errs.push(FieldError::invalid("metadata.labels", json!(k), e));
            }
            match v.as_str() {
                Some(v) => {
                    for e in label_value_errors(v) {
                        errs.push(FieldError::invalid("metadata.labels", json!(v), e));
                    }
                }
                None => errs.push(FieldError::invalid("metadata.labels", v.clone(), "must be a string")),
            }
        }
    }
    if let Some(ann) = obj.pointer("/metadata/annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            for e in qualified_name_errors(&k.to_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", json!(k), e));
            }
        }
        if total > 256 * 1024 {
            errs.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

/// Cluster-wide settings that defaulting needs.
#[derive(Debug, Clone)]
pub struct ClusterNetwork {
    pub dual_stack: bool,
}

/// Allocators for Service cluster IPs and node ports (monotonic; released addresses are not reused).
#[derive(Debug, Default)]
pub struct Allocators {
    pub next_v4: u32,
    pub next_v6: u32,
    pub next_node_port: u32,
}

impl Allocators {
    fn cluster_ip(&mut self, family: &str) -> String {
        if family == "IPv6" {
            self.next_v6 += 1;
            format!("fd00:10:96::{:x}", 0x10 + self.next_v6)
        } else {
            self.next_v4 += 1;
            let n = 10 + self.next_v4;
            format!("10.96.{}.{}", n / 250, n % 250 + 1)
        }
    }

    fn node_port(&mut self) -> u64 {
        self.next_node_port += 1;
        u64::from(30000 + (self.next_node_port % 2767))
    }
}

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => Some("IPv4"),
        Ok(IpAddr::V6(_)) => Some("IPv6"),
        Err(_) => None,
    }
}

/// Defaults and allocations a Service gets on create and update (`old` is the stored object on update).
pub fn default_service(
    obj: &mut Value,
    old: Option<&Value>,
    net: &ClusterNetwork,
    alloc: &mut Allocators,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports.iter_mut() {
            if p.is_object() {
                if p["protocol"].is_null() {
                    p["protocol"] = json!("TCP");
                }
                if p["targetPort"].is_null() && !p["port"].is_null() {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
    }
    if let Some(old) = old {
        drop_type_dependent_fields(spec, &old["spec"]);
    }
    if ty == "ExternalName" {
        return errs;
    }
    if spec["internalTrafficPolicy"].is_null() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") && spec["externalTrafficPolicy"].is_null() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if ty == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"].is_null() {
        spec["allocateLoadBalancerNodePorts"] = json!(true);
    }
    // Allocated values survive updates that leave them out, like the real server's patchAllocatedValues.
    if let Some(old) = old {
        let old_spec = &old["spec"];
        if spec["clusterIP"].as_str().unwrap_or_default().is_empty() && !old_spec["clusterIP"].is_null() {
            spec["clusterIP"] = old_spec["clusterIP"].clone();
            if spec["clusterIPs"].is_null() {
                spec["clusterIPs"] = old_spec["clusterIPs"].clone();
            }
        }
        if spec["ipFamilies"].is_null() && !old_spec["ipFamilies"].is_null() {
            spec["ipFamilies"] = old_spec["ipFamilies"].clone();
        }
        if spec["ipFamilyPolicy"].is_null() && !old_spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = old_spec["ipFamilyPolicy"].clone();
        }
        let node_ports = |t: &Value| matches!(t.as_str(), Some("NodePort" | "LoadBalancer"));
        if let (true, true, Some(ports), Some(old_ports)) = (
            node_ports(&old_spec["type"]),
            node_ports(&spec["type"]),
            spec["ports"].as_array_mut(),
            old_spec["ports"].as_array(),
        ) {
            for p in ports.iter_mut() {
                if p["nodePort"].is_null()
                    && let Some(op) =
                        old_ports.iter().find(|op| op["port"] == p["port"] && op["protocol"] == p["protocol"])
                    && !op["nodePort"].is_null()
                {
                    p["nodePort"] = op["nodePort"].clone();
                }
            }
        }
    }
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or_default().to_string();
    if !matches!(policy.as_str(), "SingleStack" | "PreferDualStack" | "RequireDualStack") {
        errs.push(FieldError::not_supported(
            "spec.ipFamilyPolicy",
            json!(policy),
            &["PreferDualStack", "RequireDualStack", "SingleStack"],
        ));
        return errs;
    }
    if policy == "RequireDualStack" && !net.dual_stack {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            json!(policy),
            "this cluster is not configured for dual-stack services",
        ));
        return errs;
    }
    let mut families: Vec<String> = spec["ipFamilies"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for (i, f) in families.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            errs.push(FieldError::not_supported(format!("spec.ipFamilies[{i}]"), json!(f), &["IPv4", "IPv6"]));
        } else if f == "IPv6" && !net.dual_stack {
            errs.push(FieldError::invalid(format!("spec.ipFamilies[{i}]"), json!(f), "not configured on this cluster"));
        }
    }
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        errs.push(FieldError::invalid(
            "spec.ipFamilies",
            json!(families),
            "may specify no more than one IP for each IP family",
        ));
    }
    if families.len() == 2 && policy == "SingleStack" {
        errs.push(FieldError::invalid(
            "spec.ipFamilies",
            json!(families),
            "when spec.ipFamilyPolicy is SingleStack, ipFamilies may contain only 1 entry",
        ));
    }
    if !errs.is_empty() {
        return errs;
    }
    let cluster_ip = spec["clusterIP"].as_str().unwrap_or_default().to_string();
    if families.is_empty() {
        if let Some(f) = family_of(&cluster_ip) {
            families.push(f.to_string());
        } else {
            families.push("IPv4".to_string());
        }
    }
    if policy != "SingleStack" && net.dual_stack && families.len() == 1 {
        let other = if families[0] == "IPv4" { "IPv6" } else { "IPv4" };
        families.push(other.to_string());
    }
    if cluster_ip == "None" {
        spec["clusterIPs"] = json!(["None"]);
    } else {
        let mut ips: Vec<String> = spec["clusterIPs"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if ips.is_empty() && !cluster_ip.is_empty() {
            ips.push(cluster_ip.clone());
        }
        for (i, ip) in ips.iter().enumerate() {
            if family_of(ip).is_none() {
                errs.push(FieldError::invalid(format!("spec.clusterIPs[{i}]"), json!(ip), IP_MSG));
            }
        }
        if !errs.is_empty() {
            return errs;
        }
        for f in families.iter().skip(ips.len()) {
            ips.push(alloc.cluster_ip(f));
        }
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
    }
    spec["ipFamilies"] = json!(families);
    if ty == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local" && spec["healthCheckNodePort"].is_null() {
        let old_hc = old.map(|o| o["spec"]["healthCheckNodePort"].clone()).unwrap_or(Value::Null);
        spec["healthCheckNodePort"] = if old_hc.is_null() { json!(alloc.node_port()) } else { old_hc };
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer")
        && (ty == "NodePort" || spec["allocateLoadBalancerNodePorts"] != json!(false))
        && let Some(ports) = spec["ports"].as_array_mut()
    {
        for p in ports.iter_mut() {
            if p.is_object() && p["nodePort"].is_null() {
                p["nodePort"] = json!(alloc.node_port());
            }
        }
    }
    errs
}

/// Fields that only make sense for some Service types are cleared when the type changes away from them, unless
/// the update changed them itself (the real server's dropTypeDependentFields).
fn drop_type_dependent_fields(spec: &mut Value, old_spec: &Value) {
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let old_ty = old_spec["type"].as_str().unwrap_or("ClusterIP");
    let is_lb = |t: &str| t == "LoadBalancer";
    let has_node_ports = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let Some(m) = spec.as_object_mut() else { return };
    if has_node_ports(old_ty) && !has_node_ports(&ty) {
        if let (Some(ports), Some(old_ports)) =
            (m.get_mut("ports").and_then(Value::as_array_mut), old_spec["ports"].as_array())
        {
            for p in ports.iter_mut() {
                let same = old_ports.iter().any(|op| op["port"] == p["port"] && op["nodePort"] == p["nodePort"]);
                if same && let Some(pm) = p.as_object_mut() {
                    pm.remove("nodePort");
                }
            }
        }
        if m.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy") {
            m.remove("externalTrafficPolicy");
        }
    }
    if is_lb(old_ty) && !is_lb(&ty) {
        for f in
            ["loadBalancerClass", "allocateLoadBalancerNodePorts", "healthCheckNodePort", "loadBalancerSourceRanges"]
        {
            if m.get(f) == old_spec.get(f) {
                m.remove(f);
            }
        }
    }
}

/// Validation of a Service's spec (and metadata), on create and update.
pub fn service(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        errs.push(FieldError::not_supported(
            "spec.type",
            json!(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let headless = spec["clusterIP"].as_str() == Some("None");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = Vec::new();
    let mut keys = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name"), ""));
        } else if !name.is_empty() {
            for e in dns1123_label_errors(name) {
                errs.push(FieldError::invalid(format!("{path}.name"), json!(name), e));
            }
            if names.contains(&name) {
                errs.push(FieldError::duplicate(format!("{path}.name"), json!(name)));
            }
            names.push(name);
        }
        match p["port"].as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            _ => errs.push(FieldError::invalid(
                format!("{path}.port"),
                p["port"].clone(),
                "must be between 1 and 65535, inclusive",
            )),
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(format!("{path}.protocol"), json!(proto), &["SCTP", "TCP", "UDP"]));
        }
        let key = (p["port"].clone(), proto.to_string());
        if keys.contains(&key) {
            errs.push(FieldError::duplicate(path.clone(), json!({"port": p["port"], "protocol": proto})));
        }
        keys.push(key);
        if let Some(np) = p["nodePort"].as_i64()
            && !(1..=65535).contains(&np)
        {
            errs.push(FieldError::invalid(
                format!("{path}.nodePort"),
                json!(np),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
    if let Some(class) = spec["loadBalancerClass"].as_str() {
        if ty != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                "spec.loadBalancerClass",
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for e in qualified_name_errors(class) {
            errs.push(FieldError::invalid("spec.loadBalancerClass", json!(class), e));
        }
    }
    if let Some(old) = old {
        let old_spec = &old["spec"];
        if old_spec["type"] == "LoadBalancer"
            && ty == "LoadBalancer"
            && old_spec["loadBalancerClass"] != spec["loadBalancerClass"]
        {
            errs.push(FieldError::invalid(
                "spec.loadBalancerClass",
                spec["loadBalancerClass"].clone(),
                "may not change once set",
            ));
        }
        let old_ip = old_spec["clusterIP"].as_str().unwrap_or_default();
        let new_ip = spec["clusterIP"].as_str().unwrap_or_default();
        if !old_ip.is_empty() && old_ip != new_ip && ty != "ExternalName" && old_spec["type"] != "ExternalName" {
            errs.push(FieldError::invalid("spec.clusterIPs[0]", json!(new_ip), "may not change once set"));
        }
    }
    if let Some(lb_ip) = spec["loadBalancerIP"].as_str()
        && !lb_ip.is_empty()
        && lb_ip.parse::<IpAddr>().is_err()
    {
        errs.push(FieldError::invalid("spec.loadBalancerIP", json!(lb_ip), IP_MSG));
    }
}

/// `status.loadBalancer` of a Service, validated on writes to `/status`.
pub fn service_status(obj: &Value, errs: &mut Vec<FieldError>) {
    let ingress = obj.pointer("/status/loadBalancer/ingress").and_then(Value::as_array);
    let Some(ingress) = ingress else { return };
    if ingress.is_empty() {
        return;
    }
    if obj["spec"]["type"].as_str() != Some("LoadBalancer") {
        errs.push(FieldError::forbidden(
            "status.loadBalancer.ingress",
            "may only be used when `spec.type` is 'LoadBalancer'",
        ));
        return;
    }
    for (i, ing) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let ip = ing["ip"].as_str().unwrap_or_default();
        if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(format!("{path}.ip"), json!(ip), IP_MSG));
        }
        match ing.get("ipMode").filter(|m| !m.is_null()) {
            // Defaulting sets VIP when an ip is given; an ip without a mode never gets here.
            None => {}
            Some(_) if ip.is_empty() => {
                errs.push(FieldError::forbidden(format!("{path}.ipMode"), "may not be specified when `ip` is not set"));
            }
            Some(m) if m != "VIP" && m != "Proxy" => {
                errs.push(FieldError::not_supported(format!("{path}.ipMode"), m.clone(), &["Proxy", "VIP"]));
            }
            Some(_) => {}
        }
        let host = ing["hostname"].as_str().unwrap_or_default();
        if !host.is_empty() {
            for e in dns1123_subdomain_errors(host) {
                errs.push(FieldError::invalid(format!("{path}.hostname"), json!(host), e));
            }
            if host.parse::<IpAddr>().is_ok() {
                errs.push(FieldError::invalid(
                    format!("{path}.hostname"),
                    json!(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
        ports_status(&ing["ports"], &path, errs);
    }
}

fn ports_status(ports: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for (j, p) in ports.as_array().into_iter().flatten().enumerate() {
        let proto = p["protocol"].as_str().unwrap_or_default();
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(
                format!("{path}.ports[{j}].protocol"),
                json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(e) = p["error"].as_str()
            && e.len() > 316
        {
            errs.push(FieldError::too_long(format!("{path}.ports[{j}].error"), 316));
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The shape of `status.loadBalancer` (Service and Ingress), checked like the real server's typed decoding:
/// a wrong JSON type is a 400 with the decoder's message.
pub fn load_balancer_status_types(obj: &Value, go_type: &str) -> Result<(), String> {
    let err = |field: &str, v: &Value, want: &str| {
        Err(format!("json: cannot unmarshal {} into Go struct field {go_type}.{field} of type {want}", type_name(v)))
    };
    let status = &obj["status"];
    if !status.is_null() && !status.is_object() {
        return err("status", status, "object");
    }
    let lb = &status["loadBalancer"];
    if !lb.is_null() && !lb.is_object() {
        return err("status.loadBalancer", lb, "object");
    }
    let ingress = &lb["ingress"];
    if ingress.is_null() {
        return Ok(());
    }
    let Some(items) = ingress.as_array() else { return err("status.loadBalancer.ingress", ingress, "array") };
    for ing in items {
        if !ing.is_object() {
            return err("status.loadBalancer.ingress", ing, "object");
        }
        for f in ["ip", "hostname", "ipMode"] {
            if !ing[f].is_null() && !ing[f].is_string() {
                return err(&format!("status.loadBalancer.ingress.{f}"), &ing[f], "string");
            }
        }
        if !ing["ports"].is_null() {
            let Some(ports) = ing["ports"].as_array() else {
                return err("status.loadBalancer.ingress.ports", &ing["ports"], "array");
            };
            for p in ports {
                if !p.is_object() || !p["port"].is_i64() {
                    return err("status.loadBalancer.ingress.ports.port", &p["port"], "int32");
                }
                for f in ["protocol", "error"] {
                    if !p[f].is_null() && !p[f].is_string() {
                        return err(&format!("status.loadBalancer.ingress.ports.{f}"), &p[f], "string");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Service status defaulting: `ipMode: VIP` for every ingress point with an ip, as the real server does.
pub fn default_service_status(obj: &mut Value) {
    if obj["spec"]["type"].as_str() != Some("LoadBalancer") {
        return;
    }
    if let Some(ingress) = obj.pointer_mut("/status/loadBalancer/ingress").and_then(Value::as_array_mut) {
        for ing in ingress {
            if ing.is_object() && ing["ip"].as_str().is_some_and(|s| !s.is_empty()) && ing["ipMode"].is_null() {
                ing["ipMode"] = json!("VIP");
            }
        }
    }
}

/// `status.loadBalancer` of an Ingress.
pub fn ingress_status(obj: &Value, errs: &mut Vec<FieldError>) {
    for (i, ing) in
        obj.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let ip = ing["ip"].as_str().unwrap_or_default();
        if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(format!("{path}.ip"), json!(ip), IP_MSG));
        }
        let host = ing["hostname"].as_str().unwrap_or_default();
        if !host.is_empty() {
            for e in dns1123_subdomain_errors(host) {
                errs.push(FieldError::invalid(format!("{path}.hostname"), json!(host), e));
            }
            if host.parse::<IpAddr>().is_ok() {
                errs.push(FieldError::invalid(
                    format!("{path}.hostname"),
                    json!(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
        ports_status(&ing["ports"], &path, errs);
    }
}

pub fn ingress(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        if let Some(host) = rule["host"].as_str() {
            let check = host.strip_prefix("*.").unwrap_or(host);
            for e in dns1123_subdomain_errors(check) {
                errs.push(FieldError::invalid(format!("spec.rules[{i}].host"), json!(host), e));
            }
        }
        for (j, p) in rule.pointer("/http/paths").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let path = format!("spec.rules[{i}].http.paths[{j}]");
            match p["pathType"].as_str() {
                None => errs.push(FieldError::required(format!("{path}.pathType"), "pathType must be specified")),
                Some("Exact" | "Prefix" | "ImplementationSpecific") => {}
                Some(other) => errs.push(FieldError::not_supported(
                    format!("{path}.pathType"),
                    json!(other),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            if p["backend"].is_null() {
                errs.push(FieldError::required(format!("{path}.backend"), ""));
            }
        }
    }
    if spec["rules"].as_array().is_none_or(Vec::is_empty) && spec["defaultBackend"].is_null() {
        errs.push(FieldError::invalid("spec", spec.clone(), "either `defaultBackend` or `rules` must be specified"));
    }
}

pub fn ingress_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let controller = obj.pointer("/spec/controller").and_then(Value::as_str).unwrap_or_default();
    if controller.is_empty() {
        errs.push(FieldError::required("spec.controller", ""));
    } else if controller.len() > 250 {
        errs.push(FieldError::too_long("spec.controller", 250));
    }
    if let Some(old) = old
        && old.pointer("/spec/controller") != obj.pointer("/spec/controller")
    {
        errs.push(FieldError::invalid("spec.controller", json!(controller), "field is immutable"));
    }
}

pub fn endpoint_slice(obj: &Value, errs: &mut Vec<FieldError>) {
    let at = obj["addressType"].as_str().unwrap_or_default();
    if at.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !matches!(at, "IPv4" | "IPv6" | "FQDN") {
        errs.push(FieldError::not_supported("addressType", json!(at), &["FQDN", "IPv4", "IPv6"]));
    }
    for (i, ep) in obj["endpoints"].as_array().into_iter().flatten().enumerate() {
        let addrs = ep["addresses"].as_array().cloned().unwrap_or_default();
        if addrs.is_empty() || addrs.len() > 100 {
            errs.push(FieldError::invalid(
                format!("endpoints[{i}].addresses"),
                json!(addrs.len()),
                "must contain at least 1 and no more than 100 addresses",
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            let a = a.as_str().unwrap_or_default();
            let ok = match at {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => dns1123_subdomain_errors(a).is_empty(),
            };
            if !ok {
                let what = match at {
                    "IPv4" => "must be a valid IPv4 address",
                    "IPv6" => "must be a valid IPv6 address",
                    _ => SUBDOMAIN_MSG,
                };
                errs.push(FieldError::invalid(format!("endpoints[{i}].addresses[{j}]"), json!(a), what));
            }
        }
    }
    for (i, p) in obj["ports"].as_array().into_iter().flatten().enumerate() {
        if let Some(n) = p["port"].as_i64()
            && !(0..=65535).contains(&n)
        {
            errs.push(FieldError::invalid(
                format!("ports[{i}].port"),
                json!(n),
                "must be between 0 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p["protocol"].as_str()
            && !matches!(proto, "TCP" | "UDP" | "SCTP")
        {
            errs.push(FieldError::not_supported(format!("ports[{i}].protocol"), json!(proto), &["SCTP", "TCP", "UDP"]));
        }
    }
}

pub fn default_endpoint_slice(obj: &mut Value) {
    if let Some(ports) = obj["ports"].as_array_mut() {
        for p in ports {
            if p.is_object() && p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
        }
    }
}

pub fn secret(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let ty = obj["type"].as_str().unwrap_or("Opaque");
    if let Some(data) = obj["data"].as_object() {
        for k in data.keys() {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                errs.push(FieldError::invalid(
                    "data",
                    json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
    if ty == "kubernetes.io/tls" {
        for key in ["tls.crt", "tls.key"] {
            if obj["data"].get(key).is_none() {
                errs.push(FieldError::required(format!("data[{key}]"), ""));
            }
        }
    }
    if let Some(old) = old {
        if old["type"] != obj["type"] {
            errs.push(FieldError::invalid("type", json!(ty), "field is immutable"));
        }
        if old["immutable"] == json!(true) && (old["data"] != obj["data"] || old["immutable"] != obj["immutable"]) {
            errs.push(FieldError::forbidden("data", "field is immutable when `immutable` is set"));
        }
    }
}

/// Secrets: `stringData` is merged into `data` (base64) and dropped; `type` defaults to Opaque.
pub fn default_secret(obj: &mut Value) -> Vec<FieldError> {
    use base64::Engine as _;
    let mut errs = Vec::new();
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
    if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            let v = v.as_str().unwrap_or_default();
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(v));
        }
    }
    if let Some(data) = obj["data"].as_object() {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                errs.push(FieldError::invalid(format!("data[{k}]"), v.clone(), "must be base64-encoded bytes"));
            }
        }
    }
    errs
}

const EVENT_TYPES: &[&str] = &["Normal", "Warning"];

/// Events, in core/v1 form (the storage form). `events_api` is true for requests through events.k8s.io, which
/// validates like the real server's newer rules (required eventTime, reportingController, action...).
pub fn event(obj: &Value, events_api: bool, errs: &mut Vec<FieldError>) {
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let io_ns = obj.pointer("/involvedObject/namespace").and_then(Value::as_str).unwrap_or_default();
    let (io, reporting, note) = if events_api {
        ("regarding", "reportingController", "note")
    } else {
        ("involvedObject", "reportingComponent", "message")
    };
    if !io_ns.is_empty() && io_ns != ns {
        errs.push(FieldError::invalid(format!("{io}.namespace"), json!(io_ns), "does not match event.namespace"));
    }
    let ty = obj["type"].as_str().unwrap_or_default();
    if (events_api || !ty.is_empty()) && !EVENT_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("type", json!(ty), EVENT_TYPES));
    }
    let event_time_set = obj["eventTime"].as_str().is_some_and(|s| !s.is_empty());
    if events_api || event_time_set {
        if !event_time_set {
            errs.push(FieldError::required("eventTime", ""));
        }
        let rc = obj["reportingComponent"].as_str().unwrap_or_default();
        if rc.is_empty() {
            errs.push(FieldError::required(reporting, ""));
        } else {
            for e in qualified_name_errors(rc) {
                errs.push(FieldError::invalid(reporting, json!(rc), e));
            }
        }
        let ri = obj["reportingInstance"].as_str().unwrap_or_default();
        if ri.is_empty() {
            errs.push(FieldError::required("reportingInstance", ""));
        } else if ri.len() > 128 {
            errs.push(FieldError::invalid("reportingInstance", json!(ri), "can have at most 128 characters"));
        }
        let action = obj["action"].as_str().unwrap_or_default();
        if action.is_empty() {
            errs.push(FieldError::required("action", ""));
        } else if action.len() > 128 {
            errs.push(FieldError::invalid("action", json!(action), "can have at most 128 characters"));
        }
        let reason = obj["reason"].as_str().unwrap_or_default();
        if reason.is_empty() {
            errs.push(FieldError::required("reason", ""));
        } else if reason.len() > 128 {
            errs.push(FieldError::invalid("reason", json!(reason), "can have at most 128 characters"));
        }
        if obj["message"].as_str().is_some_and(|m| m.len() > 1024) {
            errs.push(FieldError::too_long(note, 1024));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(ingress: Value) -> Value {
        json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": ingress}}})
    }

    #[test]
    fn names() {
        assert!(dns1035_label_errors("web-1").is_empty());
        assert!(!dns1035_label_errors("1web").is_empty());
        assert!(dns1123_subdomain_errors("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain_errors("A.b").is_empty());
        assert!(!dns1123_subdomain_errors("a..b").is_empty());
        assert!(!dns1123_label_errors(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn load_balancer_status_rules() {
        let mut errs = Vec::new();
        service_status(&lb(json!([{"ip": "192.0.2.1", "ipMode": "VIP"}, {"hostname": "lb.example.com"}])), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = lb(json!([
            {"ip": "300.1.1.1"},
            {"ip": "192.0.2.1", "ipMode": "Magic"},
            {"hostname": "lb.example.com", "ipMode": "VIP"},
            {"hostname": "192.0.2.7"},
        ]));
        let mut errs = Vec::new();
        service_status(&bad, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "status.loadBalancer.ingress[0].ip",
                "status.loadBalancer.ingress[1].ipMode",
                "status.loadBalancer.ingress[2].ipMode",
                "status.loadBalancer.ingress[3].hostname",
            ]
        );
        let mut errs = Vec::new();
        service_status(
            &json!({"spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
            &mut errs,
        );
        assert_eq!(errs[0].body(), "Forbidden: may only be used when `spec.type` is 'LoadBalancer'");
    }

    #[test]
    fn service_defaults_and_allocation() {
        let mut alloc = Allocators::default();
        let net = ClusterNetwork { dual_stack: true };
        let mut svc =
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "ipFamilyPolicy": "PreferDualStack"}});
        assert!(default_service(&mut svc, None, &net, &mut alloc).is_empty());
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(svc["spec"]["clusterIPs"].as_array().unwrap().len(), 2);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert!(svc["spec"]["ports"][0]["nodePort"].is_u64());
        let mut single = json!({"spec": {"ports": [{"port": 80}], "ipFamilyPolicy": "RequireDualStack"}});
        let errs = default_service(&mut single, None, &ClusterNetwork { dual_stack: false }, &mut alloc);
        assert_eq!(errs[0].field, "spec.ipFamilyPolicy");
        // An update that leaves the cluster IP out keeps the allocated one.
        let mut update = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        assert!(default_service(&mut update, Some(&svc), &net, &mut alloc).is_empty());
        assert_eq!(update["spec"]["clusterIPs"], svc["spec"]["clusterIPs"]);
        assert_eq!(update["spec"]["ports"][0]["nodePort"], svc["spec"]["ports"][0]["nodePort"]);
        // Changing the type away from LoadBalancer drops what only a load balancer has.
        let mut lb =
            json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb", "ports": [{"port": 80}]}});
        assert!(default_service(&mut lb, None, &net, &mut alloc).is_empty());
        let mut to_cluster_ip = lb.clone();
        to_cluster_ip["spec"]["type"] = json!("ClusterIP");
        assert!(default_service(&mut to_cluster_ip, Some(&lb), &net, &mut alloc).is_empty());
        assert!(to_cluster_ip["spec"].get("loadBalancerClass").is_none());
        assert!(to_cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
        let mut errs = Vec::new();
        service(&to_cluster_ip, Some(&lb), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }
}
