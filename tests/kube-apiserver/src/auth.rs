//! Bearer tokens and their permissions (an RBAC-like allow list), and the authorization decision.

use std::collections::HashMap;

use serde_json::{Value, json};

/// One allowed action, like one RBAC rule with one verb/group/resource. `"*"` matches anything in any field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    /// `None`: the main resource only (as in RBAC, `services` does not grant `services/status`).
    pub subresource: Option<String>,
    /// `None`: every namespace and cluster-scoped requests (a ClusterRoleBinding); `Some(ns)`: requests in that
    /// namespace only (a RoleBinding).
    pub namespace: Option<String>,
}

impl Permission {
    pub fn new(verb: &str, api_group: &str, resource: &str) -> Self {
        let (resource, sub) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        Permission {
            verb: verb.to_string(),
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource: sub,
            namespace: None,
        }
    }

    /// The same permission restricted to one namespace.
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }

    /// Every verb on everything: a cluster-admin token.
    pub fn all() -> Self {
        Permission::new("*", "*", "*").with_any_subresource()
    }

    pub fn with_any_subresource(mut self) -> Self {
        self.subresource = Some("*".to_string());
        self
    }

    pub fn allows(&self, a: &Attributes) -> bool {
        let m = |rule: &str, v: &str| rule == "*" || rule == v;
        let sub_ok = match (&self.subresource, a.subresource.as_deref()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(s), None) => s == "*" && self.resource == "*",
            (Some(s), Some(r)) => s == "*" || s == r,
        };
        let ns_ok = match (&self.namespace, a.namespace.as_deref()) {
            (None, _) => true,
            (Some(p), Some(ns)) => p == ns,
            (Some(_), None) => false,
        };
        m(&self.verb, &a.verb) && m(&self.api_group, &a.api_group) && m(&self.resource, &a.resource) && sub_ok && ns_ok
    }
}

/// What a request does, in authorization terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// The real server's 403 message: `services "x" is forbidden: User "u" cannot patch resource "services/status"
    /// in API group "" in the namespace "ns"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        let resource = match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        };
        let subject = match &self.name {
            Some(n) => format!("{} {n:?}", self.qualified()),
            None => self.qualified(),
        };
        let scope = match &self.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_string(),
        };
        format!(
            "{subject} is forbidden: User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            self.verb, self.api_group
        )
    }

    fn qualified(&self) -> String {
        if self.api_group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.api_group) }
    }

    pub fn forbidden_details(&self) -> Value {
        let mut d = json!({"kind": self.resource});
        if let Some(n) = &self.name {
            d["name"] = json!(n);
        }
        if !self.api_group.is_empty() {
            d["group"] = json!(self.api_group);
        }
        d
    }
}

#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub user: String,
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Default)]
pub struct Tokens {
    pub by_token: HashMap<String, TokenEntry>,
}

impl Tokens {
    pub fn user(&self, token: &str) -> Option<&TokenEntry> {
        self.by_token.get(token)
    }

    pub fn authorize(entry: &TokenEntry, a: &Attributes) -> bool {
        entry.permissions.iter().any(|p| p.allows(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, resource: &str, sub: Option<&str>, ns: Option<&str>) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: String::new(),
            resource: resource.into(),
            subresource: sub.map(Into::into),
            namespace: ns.map(Into::into),
            name: None,
        }
    }

    #[test]
    fn rules_match_like_rbac() {
        let p = Permission::new("patch", "", "services/status");
        assert!(p.allows(&attrs("patch", "services", Some("status"), Some("a"))));
        assert!(!p.allows(&attrs("patch", "services", None, Some("a"))));
        let list = Permission::new("list", "", "services");
        assert!(list.allows(&attrs("list", "services", None, None)));
        assert!(!list.allows(&attrs("list", "services", Some("status"), None)));
        let scoped = Permission::new("list", "", "services").in_namespace("a");
        assert!(scoped.allows(&attrs("list", "services", None, Some("a"))));
        assert!(!scoped.allows(&attrs("list", "services", None, Some("b"))));
        assert!(!scoped.allows(&attrs("list", "services", None, None)));
        assert!(Permission::all().allows(&attrs("delete", "nodes", Some("status"), None)));
    }

    #[test]
    fn forbidden_message_shape() {
        let mut a = attrs("patch", "services", Some("status"), Some("ns"));
        a.name = Some("web".into());
        assert_eq!(
            a.forbidden_message("portico"),
            "services \"web\" is forbidden: User \"portico\" cannot patch resource \"services/status\" in API group \"\" in the namespace \"ns\""
        );
        let b = Attributes { api_group: "networking.k8s.io".into(), ..attrs("list", "ingresses", None, None) };
        assert_eq!(
            b.forbidden_message("u"),
            "ingresses.networking.k8s.io is forbidden: User \"u\" cannot list resource \"ingresses\" in API group \"networking.k8s.io\" at the cluster scope"
        );
    }
}
