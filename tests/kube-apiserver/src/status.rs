//! `Status` objects: the error bodies of the Kubernetes API, shaped like the real server's.

use serde_json::{Value, json};

use crate::kinds::Kind;

/// One field error of a 422 `Invalid` answer, as `k8s.io/apimachinery/pkg/util/validation/field` renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub value: Option<Value>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldErrorKind {
    Invalid,
    Required,
    NotSupported,
    Forbidden,
    TooLong,
    Duplicate,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Invalid, value: Some(value), detail: detail.into() }
    }
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Required, value: None, detail: detail.into() }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Forbidden, value: None, detail: detail.into() }
    }
    pub fn not_supported(field: impl Into<String>, value: Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported,
            value: Some(value),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooLong,
            value: None,
            detail: format!("may not be more than {max} bytes"),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Duplicate, value: Some(value), detail: String::new() }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
        }
    }

    /// The message without the field path ("Invalid value: \"x\": detail").
    pub fn body(&self) -> String {
        let head = match self.kind {
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::Duplicate => "Duplicate value",
        };
        let mut s = head.to_string();
        if let Some(v) = &self.value
            && matches!(self.kind, FieldErrorKind::Invalid | FieldErrorKind::NotSupported | FieldErrorKind::Duplicate)
        {
            s.push_str(": ");
            s.push_str(&render_value(v));
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// An error answer of the API: the HTTP code and the `Status` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty()
            && let Some(o) = s.as_object_mut()
        {
            o.remove("reason");
        }
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(kind: &Kind, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{} {name:?} not found", kind.qualified_resource()))
            .with_details(details(kind, Some(name)))
    }

    pub fn namespace_not_found(name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("namespaces {name:?} not found"))
            .with_details(json!({"name": name, "kind": "namespaces"}))
    }

    pub fn not_found_path() -> Self {
        ApiError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    pub fn already_exists(kind: &Kind, name: &str) -> Self {
        ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", kind.qualified_resource()))
            .with_details(details(kind, Some(name)))
    }

    pub fn conflict(kind: &Kind, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} {name:?}: {why}", kind.qualified_resource()),
        )
        .with_details(details(kind, Some(name)))
    }

    pub fn stale(kind: &Kind, name: &str) -> Self {
        Self::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &Kind, name: &str, errors: Vec<FieldError>) -> Self {
        Self::invalid_group_kind(kind.group, kind.kind, name, errors)
    }

    pub fn invalid_group_kind(group: &str, kind: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let rendered: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.body())).collect();
        let list = if rendered.len() == 1 { rendered[0].clone() } else { format!("[{}]", rendered.join(", ")) };
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let causes: Vec<Value> =
            errors.iter().map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field})).collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        ApiError::new(422, "Invalid", format!("{qualified} {name:?} is invalid: {list}")).with_details(d)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_old(requested: u64, oldest: u64) -> Self {
        Self::gone(format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn too_large(requested: u64, current: u64) -> Self {
        let mut e =
            ApiError::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"))
                .with_details(json!({
                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": 1
                }));
        e.retry_after = Some(1);
        e
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            .with_details(json!({}))
    }

    pub fn unsupported_media_type(got: &str, accepted: &[&str]) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
        .with_details(json!({"causes": [{"reason": "UnexpectedHeader", "message": got}]}))
    }

    pub fn internal(message: &str) -> Self {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {message}"))
            .with_details(json!({"causes": [{"message": message}]}))
    }
}

fn details(kind: &Kind, name: Option<&str>) -> Value {
    let mut d = json!({"kind": kind.plural});
    if let Some(n) = name {
        d["name"] = json!(n);
    }
    if !kind.group.is_empty() {
        d["group"] = json!(kind.group);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_shape() {
        let kind = crate::kinds::find("", "v1", "services").unwrap();
        let e = ApiError::invalid(
            kind,
            "web",
            vec![FieldError::invalid(
                "status.loadBalancer.ingress[0].ip",
                json!("nope"),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Service \"web\" is invalid: status.loadBalancer.ingress[0].ip: Invalid value: \"nope\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        let s = e.status();
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueInvalid");
        assert_eq!(s["details"]["kind"], "Service");
    }

    #[test]
    fn not_found_names_the_group() {
        let kind = crate::kinds::find("networking.k8s.io", "v1", "ingresses").unwrap();
        let e = ApiError::not_found(kind, "a");
        assert_eq!(e.message, "ingresses.networking.k8s.io \"a\" not found");
        assert_eq!(e.status()["details"]["group"], "networking.k8s.io");
    }
}
