//! Patches (JSON merge, JSON patch, strategic merge treated as merge) and server-side apply with field ownership
//! (`metadata.managedFields`), on plain JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        if let Value::Object(t) = target {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// The `patchStrategy`/`patchMergeKey` of the lists of our kinds that merge instead of being replaced.
enum SmpList {
    Replace,
    MergeByKey(&'static str),
    MergePrimitives,
}

fn smp_list(plural: &str, path: &str) -> SmpList {
    match (plural, path) {
        (_, "metadata.ownerReferences") => SmpList::MergeByKey("uid"),
        (_, "metadata.finalizers") => SmpList::MergePrimitives,
        ("services", "spec.ports") => SmpList::MergeByKey("port"),
        (_, "status.conditions") => SmpList::MergeByKey("type"),
        ("nodes", "status.addresses") => SmpList::MergeByKey("type"),
        _ => SmpList::Replace,
    }
}

/// A strategic merge patch for our kinds: a JSON merge patch where the lists that carry a patch strategy merge
/// (by their merge key, or as sets for primitives), with the `$patch: delete|replace`,
/// `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` directives.
pub fn strategic_merge_patch(plural: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    smp(plural, &mut Vec::new(), target, patch)
}

fn smp(plural: &str, path: &mut Vec<String>, target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("$patch");
            }
            *target = v;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type: {other} in map: {patch}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else { return Ok(()) };
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (t.get_mut(field).and_then(Value::as_array_mut), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let dotted = path.join(".");
        match (smp_list(plural, &dotted), v) {
            (SmpList::MergeByKey(key), Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if !existing.is_array() {
                    *existing = Value::Array(Vec::new());
                }
                let list = existing.as_array_mut().map(std::mem::take).unwrap_or_default();
                let mut list = list;
                if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
                    list = items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect();
                } else {
                    for item in items {
                        let Some(kv) = item.get(key) else {
                            return Err(format!("map: {item} does not contain declared merge key: {key}"));
                        };
                        let pos = list.iter().position(|x| x.get(key) == Some(kv));
                        match (item.get("$patch").and_then(Value::as_str), pos) {
                            (Some("delete"), Some(i)) => {
                                list.remove(i);
                            }
                            (Some("delete"), None) => {}
                            (_, Some(i)) => smp(plural, path, &mut list[i], item)?,
                            (_, None) => {
                                let mut fresh = Value::Object(Map::new());
                                smp(plural, path, &mut fresh, item)?;
                                list.push(fresh);
                            }
                        }
                    }
                }
                t.insert(k.clone(), Value::Array(list));
            }
            (SmpList::MergePrimitives, Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = existing.as_array_mut() {
                    for i in items {
                        if !list.contains(i) {
                            list.push(i.clone());
                        }
                    }
                } else {
                    *existing = v.clone();
                }
            }
            (_, Value::Object(_)) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                smp(plural, path, entry, v)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

/// RFC 6902 JSON patch; errors are the message the real server puts in its 422 answer.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    json_patch::patch(target, &p).map_err(|e| e.to_string())
}

/// One element of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathEl {
    Field(String),
    /// An element of an associative list, by its keys (canonical JSON object).
    Key(String),
    /// An element of a set list, by value (canonical JSON).
    Value(String),
}

pub type Path = Vec<PathEl>;
pub type FieldSet = BTreeSet<Path>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum ListType {
    Atomic,
    Map(&'static [&'static str]),
    Set,
}

/// The little schema knowledge SSA needs: which lists are associative, keyed by what.
fn list_type(plural: &str, path: &str) -> ListType {
    match (plural, path) {
        (_, "metadata.ownerReferences") => ListType::Map(&["uid"]),
        (_, "metadata.finalizers") => ListType::Set,
        ("services", "spec.ports") => ListType::Map(&["port", "protocol"]),
        (_, "status.conditions") => ListType::Map(&["type"]),
        ("nodes", "status.addresses") => ListType::Map(&["type"]),
        _ => ListType::Atomic,
    }
}

fn atomic_map(plural: &str, path: &str) -> bool {
    matches!((plural, path), ("services", "spec.selector"))
}

fn dotted(path: &Path) -> String {
    path.iter()
        .filter_map(|p| match p {
            PathEl::Field(f) => Some(f.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn element_key(plural: &str, list_path: &str, keys: &[&str], el: &Value) -> String {
    let mut m = BTreeMap::new();
    for k in keys {
        let mut v = el.get(*k).cloned().unwrap_or(Value::Null);
        if v.is_null() && *k == "protocol" && list_path == "spec.ports" && plural == "services" {
            v = json!("TCP");
        }
        if !v.is_null() {
            m.insert((*k).to_string(), v);
        }
    }
    serde_json::to_string(&m).unwrap_or_default()
}

/// Metadata fields nobody owns.
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

/// The set of leaf fields an object sets.
pub fn field_set(plural: &str, obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta {
                        if IGNORED_META.contains(&mk.as_str()) {
                            continue;
                        }
                        walk(plural, vec![PathEl::Field(k.clone()), PathEl::Field(mk.clone())], mv, &mut out);
                    }
                }
                continue;
            }
            walk(plural, vec![PathEl::Field(k.clone())], v, &mut out);
        }
    }
    out
}

fn walk(plural: &str, path: Path, v: &Value, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !atomic_map(plural, &dotted(&path)) => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(PathEl::Field(k.clone()));
                walk(plural, p, child, out);
            }
        }
        Value::Array(items) => {
            let d = dotted(&path);
            match list_type(plural, &d) {
                ListType::Atomic => {
                    out.insert(path);
                }
                ListType::Set => {
                    for it in items {
                        let mut p = path.clone();
                        p.push(PathEl::Value(it.to_string()));
                        out.insert(p);
                    }
                }
                ListType::Map(keys) => {
                    for it in items {
                        let mut p = path.clone();
                        p.push(PathEl::Key(element_key(plural, &d, keys, it)));
                        out.insert(p.clone());
                        if let Value::Object(m) = it {
                            for (k, child) in m {
                                let mut cp = p.clone();
                                cp.push(PathEl::Field(k.clone()));
                                walk(plural, cp, child, out);
                            }
                        }
                    }
                }
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at a path, if present.
fn get_path<'a>(plural: &str, obj: &'a Value, path: &[PathEl]) -> Option<&'a Value> {
    let mut cur = obj;
    let mut fields: Path = Vec::new();
    for el in path {
        match el {
            PathEl::Field(f) => {
                cur = cur.get(f)?;
                fields.push(el.clone());
            }
            PathEl::Key(k) => {
                let d = dotted(&fields);
                let ListType::Map(keys) = list_type(plural, &d) else { return None };
                cur = cur.as_array()?.iter().find(|it| &element_key(plural, &d, keys, it) == k)?;
            }
            PathEl::Value(v) => {
                cur = cur.as_array()?.iter().find(|it| &it.to_string() == v)?;
            }
        }
    }
    Some(cur)
}

fn remove_path(plural: &str, obj: &mut Value, path: &[PathEl]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut fields: Path = Vec::new();
    let mut cur = obj;
    for el in parent {
        let next = match el {
            PathEl::Field(f) => {
                fields.push(el.clone());
                cur.get_mut(f)
            }
            PathEl::Key(k) => {
                let d = dotted(&fields);
                let ListType::Map(keys) = list_type(plural, &d) else { return };
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|it| &element_key(plural, &d, keys, it) == k))
            }
            PathEl::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        PathEl::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        PathEl::Key(k) => {
            let d = dotted(&fields);
            if let (ListType::Map(keys), Some(a)) = (list_type(plural, &d), cur.as_array_mut()) {
                a.retain(|it| &element_key(plural, &d, keys, it) != k);
            }
        }
        PathEl::Value(v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|it| &it.to_string() != v);
            }
        }
    }
}

/// Merges an applied configuration into a live object, following list and map types.
fn apply_merge(plural: &str, path: &mut Path, live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !atomic_map(plural, &dotted(path)) => {
            for (k, av) in a {
                path.push(PathEl::Field(k.clone()));
                match l.get_mut(k) {
                    Some(lv) => apply_merge(plural, path, lv, av),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let d = dotted(path);
            match list_type(plural, &d) {
                ListType::Atomic => *l = a.clone(),
                ListType::Set => {
                    for it in a {
                        if !l.contains(it) {
                            l.push(it.clone());
                        }
                    }
                }
                ListType::Map(keys) => {
                    for it in a {
                        let key = element_key(plural, &d, keys, it);
                        match l.iter_mut().find(|x| element_key(plural, &d, keys, x) == key) {
                            Some(existing) => {
                                path.push(PathEl::Key(key));
                                apply_merge(plural, path, existing, it);
                                path.pop();
                            }
                            None => l.push(it.clone()),
                        }
                    }
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

pub fn read_managed(obj: &Value) -> Vec<Managed> {
    let mut out = Vec::new();
    for e in obj.pointer("/metadata/managedFields").and_then(Value::as_array).into_iter().flatten() {
        let mut fields = FieldSet::new();
        decode(&e["fieldsV1"], &mut Vec::new(), &mut fields);
        out.push(Managed {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or_default().to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            fields,
        });
    }
    out
}

pub fn write_managed(obj: &mut Value, entries: &[Managed]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(o) = obj.as_object_mut()
        && !o.get("metadata").is_some_and(Value::is_object)
        && !list.is_empty()
    {
        o.insert("metadata".to_string(), json!({}));
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".to_string(), Value::Array(list));
        }
    }
}

fn el_name(el: &PathEl) -> String {
    match el {
        PathEl::Field(f) => format!("f:{f}"),
        PathEl::Key(k) => format!("k:{k}"),
        PathEl::Value(v) => format!("v:{v}"),
    }
}

fn encode(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut cur = &mut root;
        for el in path {
            if !cur.is_object() {
                break;
            }
            cur = &mut cur[el_name(el)];
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            }
        }
        if matches!(path.last(), Some(PathEl::Key(_))) && cur.is_object() {
            cur["."] = json!({});
        }
    }
    root
}

fn decode(v: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, child) in m {
        if k == "." {
            out.insert(path.clone());
            continue;
        }
        let el = if let Some(f) = k.strip_prefix("f:") {
            PathEl::Field(f.to_string())
        } else if let Some(f) = k.strip_prefix("k:") {
            PathEl::Key(f.to_string())
        } else if let Some(f) = k.strip_prefix("v:") {
            PathEl::Value(f.to_string())
        } else {
            continue;
        };
        path.push(el);
        decode(child, path, out);
        path.pop();
    }
}

/// `.spec.ports[port=80,protocol="TCP"].name`, as the real server prints paths in conflicts.
pub fn path_string(path: &Path) -> String {
    let mut s = String::new();
    for el in path {
        match el {
            PathEl::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathEl::Key(k) => {
                let m: BTreeMap<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            PathEl::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

fn related(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: Path,
}

/// Server-side apply of `applied` onto `live` (None when creating), by `manager`. Only fields under `scope`
/// (`None`: everything but the excluded top-level fields) are applied. Returns the merged object with its managed
/// fields, or the conflicts when `force` is false.
pub struct ApplyRequest<'a> {
    pub plural: &'a str,
    pub api_version: &'a str,
    pub manager: &'a str,
    pub force: bool,
    pub subresource: &'a str,
    pub now: &'a str,
}

pub fn apply(req: &ApplyRequest<'_>, live: Option<&Value>, applied: &Value) -> Result<Value, Vec<Conflict>> {
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = live.map(read_managed).unwrap_or_default();
    let new_set = field_set(req.plural, applied);
    let previous: FieldSet = entries
        .iter()
        .find(|e| e.manager == req.manager && e.operation == "Apply" && e.subresource == req.subresource)
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    // Conflicts: fields others own whose live value differs from the applied one.
    let mut conflicts = Vec::new();
    for e in entries.iter_mut() {
        if e.manager == req.manager {
            continue;
        }
        let mut taken = Vec::new();
        for p in &new_set {
            for owned in e.fields.iter().filter(|o| related(o, p)) {
                let shorter = if owned.len() <= p.len() { owned } else { p };
                let lv = live.and_then(|l| get_path(req.plural, l, shorter));
                let av = get_path(req.plural, applied, shorter);
                // Owning a map node is not owning what others put inside it: values are compared at leaves.
                let granular =
                    |v: Option<&Value>| v.is_some_and(Value::is_object) && !atomic_map(req.plural, &dotted(shorter));
                let node_only = owned.len() != p.len() && (granular(lv) || granular(av));
                if lv != av && !node_only {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        path: owned.clone(),
                    });
                    taken.push(owned.clone());
                }
            }
        }
        if req.force {
            for t in taken {
                e.fields.remove(&t);
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        conflicts.sort_by(|a, b| (&a.manager, &a.path).cmp(&(&b.manager, &b.path)));
        conflicts.dedup();
        return Err(conflicts);
    }

    let mut stripped = applied.clone();
    if let Some(meta) = stripped.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    apply_merge(req.plural, &mut Vec::new(), &mut result, &stripped);

    // Fields this manager applied before and no longer does are removed, unless someone else owns them.
    for p in previous.difference(&new_set) {
        let owned_elsewhere = entries
            .iter()
            .any(|e| !(e.manager == req.manager && e.operation == "Apply") && e.fields.iter().any(|o| related(o, p)));
        if !owned_elsewhere && !new_set.iter().any(|n| n.starts_with(p)) {
            remove_path(req.plural, &mut result, p);
        }
    }

    entries.retain(|e| !(e.manager == req.manager && e.operation == "Apply" && e.subresource == req.subresource));
    entries.push(Managed {
        manager: req.manager.to_string(),
        operation: "Apply".to_string(),
        api_version: req.api_version.to_string(),
        time: req.now.to_string(),
        subresource: req.subresource.to_string(),
        fields: new_set,
    });
    write_managed(&mut result, &entries);
    Ok(result)
}

/// Which fields a write can own: those its endpoint does not reset (the real server's reset-fields strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    /// The main resource of a kind with a status subresource.
    NotStatus,
    /// The status subresource.
    OnlyStatus,
}

fn scoped(set: FieldSet, scope: Scope) -> FieldSet {
    let is_status = |p: &Path| matches!(p.first(), Some(PathEl::Field(f)) if f == "status");
    match scope {
        Scope::All => set,
        Scope::NotStatus => set.into_iter().filter(|p| !is_status(p)).collect(),
        Scope::OnlyStatus => set.into_iter().filter(is_status).collect(),
    }
}

/// Records a non-apply write (create, update, patch) in `managedFields`: the fields it changed become the manager's
/// (taken from others); removed fields are nobody's.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    plural: &str,
    api_version: &str,
    manager: &str,
    subresource: &str,
    scope: Scope,
    now: &str,
    old: Option<&Value>,
    new: &mut Value,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let old_set = scoped(old.map(|o| field_set(plural, o)).unwrap_or_default(), scope);
    let new_set = scoped(field_set(plural, new), scope);
    let removed: Vec<&Path> = old_set.difference(&new_set).collect();
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || old.and_then(|o| get_path(plural, o, p)) != get_path(plural, new, p))
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        e.fields.retain(|f| !removed.contains(&f));
        if !(e.manager == manager && e.operation == "Update" && e.subresource == subresource) {
            e.fields.retain(|f| !changed.contains(f));
        }
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            None => entries.push(Managed {
                manager: manager.to_string(),
                operation: "Update".to_string(),
                api_version: api_version.to_string(),
                time: now.to_string(),
                subresource: subresource.to_string(),
                fields: changed,
            }),
        }
    }
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest { plural: "services", api_version: "v1", manager, force, subresource: "", now: NOW }
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": true});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3], "keep": true}));
        merge_patch(&mut doc, &json!({"a": "scalar"}));
        assert_eq!(doc["a"], "scalar");
    }

    #[test]
    fn strategic_merge_by_keys() {
        let mut svc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
            "selector": {"app": "web"}}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        strategic_merge_patch(
            "services",
            &mut svc,
            &json!({"metadata": {"finalizers": ["b"]}, "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "$patch": "delete"}],
                "$setElementOrder/ports": [{"port": 80}]}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}}),
        )
        .unwrap();
        assert_eq!(svc["spec"]["ports"], json!([{"port": 80, "name": "http", "targetPort": 8080}]));
        assert_eq!(svc["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "192.0.2.2"}]),
            "lists without a strategy are replaced"
        );
        strategic_merge_patch("services", &mut svc, &json!({"spec": {"selector": {"$patch": "replace", "tier": "x"}}}))
            .unwrap();
        assert_eq!(svc["spec"]["selector"], json!({"tier": "x"}));
        strategic_merge_patch(
            "services",
            &mut svc,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(svc["metadata"]["finalizers"], json!(["b"]));
        assert!(strategic_merge_patch("services", &mut svc, &json!({"spec": {"ports": [{"name": "x"}]}})).is_err());
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}});
        json_patch(&mut doc, &json!([{"op": "add", "path": "/metadata/labels/b", "value": "2"}])).unwrap();
        assert_eq!(doc["metadata"]["labels"]["b"], "2");
        assert!(json_patch(&mut doc, &json!([{"op": "test", "path": "/metadata/labels/a", "value": "9"}])).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn apply_sets_removes_and_records_ownership() {
        let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}},
            "spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"app": "web"}}});
        let obj = apply(&req("alice", false), None, &applied).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"x": "1", "y": "2"}));
        let managed = read_managed(&obj);
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0].operation, "Apply");
        let fields_v1 = &obj["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(fields_v1["f:spec"]["f:ports"]["k:{\"port\":80,\"protocol\":\"TCP\"}"]["."].is_object(), "{fields_v1}");
        // Dropping `y` from the applied configuration removes it.
        let applied2 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"app": "web"}}});
        let obj2 = apply(&req("alice", false), Some(&obj), &applied2).unwrap();
        assert_eq!(obj2["metadata"]["labels"], json!({"x": "1"}));
    }

    #[test]
    fn apply_conflicts_and_force() {
        let first = json!({"metadata": {"labels": {"x": "1"}}, "spec": {"type": "ClusterIP"}});
        let obj = apply(&req("alice", false), None, &first).unwrap();
        let second = json!({"metadata": {"labels": {"x": "2"}}});
        let conflicts = apply(&req("bob", false), Some(&obj), &second).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].manager, "alice");
        assert_eq!(path_string(&conflicts[0].path), ".metadata.labels.x");
        // The same value is shared ownership, not a conflict.
        let same = json!({"metadata": {"labels": {"x": "1"}}});
        let shared = apply(&req("bob", false), Some(&obj), &same).unwrap();
        assert_eq!(read_managed(&shared).len(), 2);
        // Forcing takes the field over.
        let forced = apply(&req("bob", true), Some(&obj), &second).unwrap();
        assert_eq!(forced["metadata"]["labels"]["x"], "2");
        let owners = read_managed(&forced);
        let alice = owners.iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.iter().any(|p| path_string(p) == ".metadata.labels.x"));
    }

    #[test]
    fn owning_a_map_is_not_owning_its_contents() {
        let r = ApplyRequest { subresource: "status", ..req("writer", false) };
        let obj = apply(&r, Some(&json!({"status": {}})), &json!({"status": {}})).unwrap();
        let other = ApplyRequest { subresource: "status", ..req("portico", false) };
        let applied = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        let out = apply(&other, Some(&obj), &applied).unwrap();
        assert_eq!(out["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        // But an atomic list owned by someone else with another value is a conflict.
        let third = ApplyRequest { subresource: "status", ..req("third", false) };
        let other_ip = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}});
        assert_eq!(apply(&third, Some(&out), &other_ip).unwrap_err()[0].manager, "portico");
    }

    #[test]
    fn updates_take_ownership_without_conflict() {
        let obj = apply(&req("alice", false), None, &json!({"metadata": {"labels": {"x": "1"}}})).unwrap();
        let mut updated = obj.clone();
        updated["metadata"]["labels"]["x"] = json!("9");
        record_update("services", "v1", "kubectl", "", Scope::All, NOW, Some(&obj), &mut updated);
        let owners = read_managed(&updated);
        assert_eq!(owners.len(), 1, "alice lost her only field: {owners:?}");
        assert_eq!(owners[0].manager, "kubectl");
        assert_eq!(owners[0].operation, "Update");
    }
}
