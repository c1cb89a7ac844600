//! The registry of kinds the server serves.

/// When `metadata.generation` is maintained, and what bumps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// The kind has no generation (Services, Secrets, Nodes, Events, Namespaces).
    None,
    /// Set to 1 on create, bumped when `.spec` changes (Ingress, IngressClass).
    Spec,
    /// Set to 1 on create, bumped when anything outside `.metadata` changes (EndpointSlice).
    AllButMetadata,
}

/// One served kind: where it lives in the API and how it behaves.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: writes to the main resource ignore `.status`, writes to `/status` change only it.
    pub status: bool,
    /// Key of the storage: two kinds sharing it are two representations of the same objects (core and
    /// events.k8s.io Events).
    pub storage: &'static str,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub generation: Generation,
    /// Field selector labels beyond `metadata.name` (and `metadata.namespace` for namespaced kinds).
    pub fields: &'static [&'static str],
}

const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `services`, or `ingresses.networking.k8s.io`: how error messages name the resource.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn is_stored(&self) -> bool {
        !self.storage.is_empty()
    }
}

pub static KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        status: true,
        storage: "services",
        verbs: ALL_VERBS,
        short_names: &["svc"],
        generation: Generation::None,
        fields: &[],
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        status: true,
        storage: "nodes",
        verbs: ALL_VERBS,
        short_names: &["no"],
        generation: Generation::None,
        fields: &["spec.unschedulable"],
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        status: false,
        storage: "secrets",
        verbs: ALL_VERBS,
        short_names: &[],
        generation: Generation::None,
        fields: &["type"],
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        status: true,
        storage: "namespaces",
        verbs: &["create", "delete", "get", "list", "patch", "update", "watch"],
        short_names: &["ns"],
        generation: Generation::None,
        fields: &["status.phase"],
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        status: false,
        storage: "events",
        verbs: ALL_VERBS,
        short_names: &["ev"],
        generation: Generation::None,
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        status: false,
        storage: "events",
        verbs: ALL_VERBS,
        short_names: &["ev"],
        generation: Generation::None,
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        status: false,
        storage: "endpointslices",
        verbs: ALL_VERBS,
        short_names: &[],
        generation: Generation::AllButMetadata,
        fields: &[],
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        namespaced: true,
        status: true,
        storage: "ingresses",
        verbs: ALL_VERBS,
        short_names: &["ing"],
        generation: Generation::Spec,
        fields: &[],
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        plural: "ingressclasses",
        singular: "ingressclass",
        namespaced: false,
        status: false,
        storage: "ingressclasses",
        verbs: ALL_VERBS,
        short_names: &[],
        generation: Generation::Spec,
        fields: &[],
    },
    Kind {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        namespaced: false,
        status: false,
        storage: "",
        verbs: &["create"],
        short_names: &[],
        generation: Generation::None,
        fields: &[],
    },
];

/// The kind served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// The kind named `kind` in `api_version` ("v1", "networking.k8s.io/v1"); also accepts a bare kind name when it is
/// unambiguous ("Service"), and a plural ("services").
pub fn lookup(api_version_or_kind: &str) -> Option<&'static Kind> {
    let (av, name) = match api_version_or_kind.rsplit_once('/') {
        Some((av, k)) if av.contains('/') || av == "v1" => (Some(av), k),
        _ => (None, api_version_or_kind),
    };
    let matches: Vec<&'static Kind> = KINDS
        .iter()
        .filter(|k| {
            (k.kind.eq_ignore_ascii_case(name) || k.plural == name) && av.is_none_or(|av| k.api_version() == av)
        })
        .collect();
    match matches.as_slice() {
        [one] => Some(one),
        // "Event" alone means the core one.
        [first, ..] => Some(first),
        [] => None,
    }
}

/// The API groups (other than core) with their single version, in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KINDS {
        if !k.group.is_empty() && !out.contains(&k.group) {
            out.push(k.group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup("Service").unwrap().plural, "services");
        assert_eq!(lookup("networking.k8s.io/v1/Ingress").unwrap().plural, "ingresses");
        assert_eq!(lookup("events.k8s.io/v1/Event").unwrap().group, "events.k8s.io");
        assert_eq!(lookup("Event").unwrap().group, "");
        assert_eq!(lookup("v1/Secret").unwrap().plural, "secrets");
        assert!(lookup("Pod").is_none());
        assert_eq!(find("discovery.k8s.io", "v1", "endpointslices").unwrap().kind, "EndpointSlice");
    }
}
