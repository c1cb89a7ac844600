//! Label selectors (equality- and set-based) and field selectors, parsed and matched like the real server.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Exists,
    NotExists,
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        Parser { s: s.as_bytes(), i: 0 }.parse()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.0.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match r.op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Equals | Op::In => v.is_some_and(|v| r.values.contains(v)),
                Op::NotEquals | Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                Op::GreaterThan | Op::LessThan => {
                    let (Some(v), Some(bound)) = (v.and_then(|v| v.parse::<i64>().ok()), r.values.iter().next()) else {
                        return false;
                    };
                    let Ok(bound) = bound.parse::<i64>() else { return false };
                    if r.op == Op::GreaterThan { v > bound } else { v < bound }
                }
            }
        })
    }

    /// Does the object (its `metadata.labels`) match?
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || matches!(c, b',' | b'=' | b'!' | b'(' | b')' | b'<' | b'>') {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn parse(mut self) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        self.skip_ws();
        if self.i == self.s.len() {
            return Ok(LabelSelector(reqs));
        }
        loop {
            reqs.push(self.requirement()?);
            self.skip_ws();
            match self.peek() {
                None => break,
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                    if self.peek().is_none() {
                        return Err("found '', expected: identifier after ','".to_string());
                    }
                }
                Some(c) => return Err(format!("found '{}', expected: ',' or 'end of string'", c as char)),
            }
        }
        Ok(LabelSelector(reqs))
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        self.skip_ws();
        let negated = self.peek() == Some(b'!');
        if negated {
            self.i += 1;
            self.skip_ws();
        }
        let key = self.ident();
        if key.is_empty() {
            return Err("found '', expected: identifier".to_string());
        }
        check_key(&key)?;
        self.skip_ws();
        if negated {
            return match self.peek() {
                None | Some(b',') => Ok(Requirement { key, op: Op::NotExists, values: BTreeSet::new() }),
                Some(c) => Err(format!("found '{}', expected: ',' or 'end of string'", c as char)),
            };
        }
        let op = match self.peek() {
            None | Some(b',') => return Ok(Requirement { key, op: Op::Exists, values: BTreeSet::new() }),
            Some(b'=') => {
                self.i += 1;
                if self.peek() == Some(b'=') {
                    self.i += 1;
                }
                Op::Equals
            }
            Some(b'!') => {
                self.i += 1;
                if self.peek() != Some(b'=') {
                    return Err("found '!', expected: '!='".to_string());
                }
                self.i += 1;
                Op::NotEquals
            }
            Some(b'>') => {
                self.i += 1;
                Op::GreaterThan
            }
            Some(b'<') => {
                self.i += 1;
                Op::LessThan
            }
            Some(_) => {
                let word = self.ident();
                match word.as_str() {
                    "in" => Op::In,
                    "notin" => Op::NotIn,
                    other => {
                        return Err(format!("found '{other}', expected: in, notin, =, ==, !=, gt, lt"));
                    }
                }
            }
        };
        self.skip_ws();
        let mut values = BTreeSet::new();
        match op {
            Op::In | Op::NotIn => {
                if self.peek() != Some(b'(') {
                    return Err("found '', expected: '('".to_string());
                }
                self.i += 1;
                loop {
                    self.skip_ws();
                    let v = self.ident();
                    check_value(&v)?;
                    values.insert(v);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b')') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err("found '', expected: ',' or ')'".to_string()),
                    }
                }
            }
            Op::GreaterThan | Op::LessThan => {
                let v = self.ident();
                if v.parse::<i64>().is_err() {
                    return Err(format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"));
                }
                values.insert(v);
            }
            _ => {
                let v = self.ident();
                check_value(&v)?;
                values.insert(v);
            }
        }
        Ok(Requirement { key, op, values })
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A qualified name: `[prefix/]name`, name ≤ 63 characters of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]`, prefix a
/// DNS-1123 subdomain.
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            for e in crate::validate::dns1123_subdomain_errors(p) {
                errs.push(format!("prefix part {e}"));
            }
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    } else if !name_chars_ok(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    errs
}

fn name_chars_ok(name: &str) -> bool {
    let first = name.chars().next().is_some_and(is_alnum);
    let last = name.chars().last().is_some_and(is_alnum);
    first && last && name.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
}

pub fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !name_chars_ok(v) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errs
}

fn check_key(key: &str) -> Result<(), String> {
    match qualified_name_errors(key).first() {
        Some(e) => Err(format!("key: Invalid value: {key:?}: {e}")),
        None => Ok(()),
    }
}

fn check_value(v: &str) -> Result<(), String> {
    match label_value_errors(v).first() {
        Some(e) => Err(format!("values[0][{v}]: Invalid value: {v:?}: {e}")),
        None => Ok(()),
    }
}

/// One term of a `fieldSelector`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    pub field: String,
    pub negated: bool,
    pub value: String,
}

/// A parsed `fieldSelector`; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(terms));
        }
        for part in split_unescaped(s, ',') {
            let (field, negated, value) = if let Some(i) = find_unescaped(&part, "!=") {
                (&part[..i], true, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "==") {
                (&part[..i], false, &part[i + 2..])
            } else if let Some(i) = find_unescaped(&part, "=") {
                (&part[..i], false, &part[i + 1..])
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
            };
            terms.push(FieldTerm { field: field.trim().to_string(), negated, value: unescape(value) });
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The single `metadata.name=x` term, when the selector is exactly that.
    #[cfg(test)]
    pub fn exact_name(&self) -> Option<&str> {
        match self.0.as_slice() {
            [t] if t.field == "metadata.name" && !t.negated => Some(&t.value),
            _ => None,
        }
    }

    /// Checks every term against the labels a kind supports (`fields` beyond the metadata ones).
    pub fn check_supported(&self, namespaced: bool, fields: &[&str]) -> Result<(), String> {
        for t in &self.0 {
            let ok = t.field == "metadata.name"
                || (namespaced && t.field == "metadata.namespace")
                || fields.contains(&t.field.as_str());
            if !ok {
                return Err(format!("field label not supported: {}", t.field));
            }
        }
        Ok(())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| {
            let actual = field_value(obj, &t.field);
            (actual == t.value) != t.negated
        })
    }
}

/// The value a field label has on an object, as the real server's field sets render it.
fn field_value(obj: &Value, field: &str) -> String {
    if field == "source" {
        return obj.pointer("/source/component").and_then(Value::as_str).unwrap_or_default().to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // Booleans that are unset read as false (spec.unschedulable).
        None if field == "spec.unschedulable" => "false".to_string(),
        _ => String::new(),
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn find_unescaped(s: &str, needle: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i..].starts_with(needle.as_bytes()) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "type": "kubernetes.io/tls"})
    }

    #[test]
    fn equality_based() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("app==web,tier=front").unwrap().matches_object(&o));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("missing!=x").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("").unwrap().matches_object(&o));
        assert!(!LabelSelector::parse("app=db").unwrap().matches_object(&o));
    }

    #[test]
    fn set_based() {
        let o = obj(json!({"app": "web", "portico.io/pool": "blue"}));
        assert!(LabelSelector::parse("app in (web, db)").unwrap().matches_object(&o));
        assert!(!LabelSelector::parse("app notin (web,db)").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("env notin (prod)").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("portico.io/pool").unwrap().matches_object(&o));
        assert!(!LabelSelector::parse("!portico.io/pool").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("!env, app in (web)").unwrap().matches_object(&o));
        assert!(!LabelSelector::parse("env in (a)").unwrap().matches_object(&o));
        assert!(LabelSelector::parse("app in ()").is_err() || !LabelSelector::parse("app in ()").unwrap().is_empty());
    }

    #[test]
    fn bad_selectors_are_errors() {
        for bad in ["app=", "app=web,", "=x", "a b", "app in web", "-bad=x", "x=in valid"] {
            if bad == "app=" {
                // An empty value is legal.
                assert!(LabelSelector::parse(bad).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let fs = FieldSelector::parse("metadata.name=a,metadata.namespace!=other").unwrap();
        assert!(fs.matches(&o));
        assert!(FieldSelector::parse("type=kubernetes.io/tls").unwrap().matches(&o));
        assert!(!FieldSelector::parse("type==Opaque").unwrap().matches(&o));
        assert_eq!(FieldSelector::parse("metadata.name=a").unwrap().exact_name(), Some("a"));
        let fs = FieldSelector::parse("spec.foo=x").unwrap();
        assert_eq!(fs.check_supported(true, &[]).unwrap_err(), "field label not supported: spec.foo");
        assert!(FieldSelector::parse("type=x").unwrap().check_supported(true, &["type"]).is_ok());
        assert!(FieldSelector::parse("nonsense").is_err());
        let escaped = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(escaped.0[0].value, "a,b");
    }
}
