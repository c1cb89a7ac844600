//! Differences between two configurations, object by object, with an RFC 6902 JSON Patch for each change.

use crate::config::{Config, Kind, ObjectMap, SETTINGS_NAME};
use serde::Serialize;
use std::cmp::Ordering;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ObjectChange {
    pub kind: Kind,
    pub name: String,
    pub op: ChangeOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// RFC 6902 operations that turn `before` into `after` (for modifications).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub patch: Vec<json_patch::PatchOperation>,
}

/// The changes that turn `old` into `new`, ordered by kind and name.
pub fn diff(old: &ObjectMap, new: &ObjectMap) -> Vec<ObjectChange> {
    let mut out = Vec::new();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                if let Some(((kind, name), before)) = a.next() {
                    out.push(change(*kind, name, ChangeOp::Removed, Some(before), None));
                }
            }
            Ordering::Greater => {
                if let Some(((kind, name), after)) = b.next() {
                    out.push(change(*kind, name, ChangeOp::Added, None, Some(after)));
                }
            }
            Ordering::Equal => {
                if let (Some(((kind, name), before)), Some((_, after))) = (a.next(), b.next())
                    && before != after
                {
                    out.push(change(*kind, name, ChangeOp::Modified, Some(before), Some(after)));
                }
            }
        }
    }
    out
}

/// The changes that turn configuration `old` into `new` (both normalized). Only objects that differ are
/// serialized, so a one-object change to a large configuration stays cheap.
pub fn diff_configs(old: &Config, new: &Config) -> Result<Vec<ObjectChange>, serde_json::Error> {
    let mut out = Vec::new();
    diff_lists(Kind::Pool, &old.pools, &new.pools, |p| &p.name, &mut out)?;
    diff_lists(Kind::Service, &old.services, &new.services, |s| &s.name, &mut out)?;
    diff_lists(Kind::Cluster, &old.clusters, &new.clusters, |s| &s.name, &mut out)?;
    diff_lists(Kind::GlobalService, &old.global_services, &new.global_services, |s| &s.name, &mut out)?;
    diff_lists(Kind::BgpPeer, &old.bgp_peers, &new.bgp_peers, |p| &p.name, &mut out)?;
    diff_lists(Kind::L2Advertisement, &old.l2_advertisements, &new.l2_advertisements, |a| &a.name, &mut out)?;
    if old.settings != new.settings {
        let (b, a) = (serde_json::to_value(&old.settings)?, serde_json::to_value(&new.settings)?);
        out.push(change(Kind::Settings, SETTINGS_NAME, ChangeOp::Modified, Some(&b), Some(&a)));
    }
    out.sort_by(|x, y| (x.kind, &x.name).cmp(&(y.kind, &y.name)));
    Ok(out)
}

fn diff_lists<T: serde::Serialize + PartialEq>(
    kind: Kind,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    out: &mut Vec<ObjectChange>,
) -> Result<(), serde_json::Error> {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => name(a).cmp(name(b)),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                let b = serde_json::to_value(&old[i])?;
                out.push(change(kind, name(&old[i]), ChangeOp::Removed, Some(&b), None));
                i += 1;
            }
            Ordering::Greater => {
                let a = serde_json::to_value(&new[j])?;
                out.push(change(kind, name(&new[j]), ChangeOp::Added, None, Some(&a)));
                j += 1;
            }
            Ordering::Equal => {
                if old[i] != new[j] {
                    let (b, a) = (serde_json::to_value(&old[i])?, serde_json::to_value(&new[j])?);
                    out.push(change(kind, name(&new[j]), ChangeOp::Modified, Some(&b), Some(&a)));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Replaces the values of secret fields in a change (before, after and patch) with a marker, so a diff shows
/// that a credential changed without showing it.
pub fn redact(change: &mut ObjectChange) {
    let fields = change.kind.secret_fields();
    if fields.is_empty() {
        return;
    }
    for body in [change.before.as_mut(), change.after.as_mut()].into_iter().flatten() {
        redact_value(change.kind, body);
    }
    for op in &mut change.patch {
        let path = match op {
            json_patch::PatchOperation::Add(o) => Some((o.path.to_string(), &mut o.value)),
            json_patch::PatchOperation::Replace(o) => Some((o.path.to_string(), &mut o.value)),
            json_patch::PatchOperation::Test(o) => Some((o.path.to_string(), &mut o.value)),
            _ => None,
        };
        if let Some((path, value)) = path
            && fields.iter().any(|f| path == format!("/{f}") || path.starts_with(&format!("/{f}/")))
        {
            *value = serde_json::Value::String(REDACTED.into());
        }
    }
}

pub const REDACTED: &str = "<redacted>";

/// Replaces the secret fields of an object body with a marker.
pub fn redact_value(kind: Kind, body: &mut serde_json::Value) {
    if let Some(map) = body.as_object_mut() {
        for field in kind.secret_fields() {
            if let Some(v) = map.get_mut(*field) {
                *v = serde_json::Value::String(REDACTED.into());
            }
        }
    }
}

fn change(
    kind: Kind,
    name: &str,
    op: ChangeOp,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> ObjectChange {
    let patch = match (before, after) {
        (Some(b), Some(a)) => json_patch::diff(b, a).0,
        _ => Vec::new(),
    };
    ObjectChange { kind, name: name.to_string(), op, before: before.cloned(), after: after.cloned(), patch }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn added_removed_modified() {
        let mut old = ObjectMap::new();
        old.insert((Kind::Pool, "a".into()), json!({"name": "a", "auto_assign": true}));
        old.insert((Kind::Pool, "b".into()), json!({"name": "b"}));
        let mut new = ObjectMap::new();
        new.insert((Kind::Pool, "a".into()), json!({"name": "a", "auto_assign": false}));
        new.insert((Kind::Service, "web".into()), json!({"name": "web"}));
        let d = diff(&old, &new);
        let ops: Vec<_> = d.iter().map(|c| (c.name.as_str(), c.op)).collect();
        assert_eq!(ops, [("a", ChangeOp::Modified), ("b", ChangeOp::Removed), ("web", ChangeOp::Added)]);
        let patch = serde_json::to_value(&d[0].patch).unwrap();
        assert_eq!(patch, json!([{"op": "replace", "path": "/auto_assign", "value": false}]));
        assert!(diff(&new, &new).is_empty());
    }
}
