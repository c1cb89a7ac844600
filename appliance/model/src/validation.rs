//! Validation errors that name the field and the reason, collected so that every bad field is reported at once.

use serde::Serialize;
use std::fmt;

/// One bad field: `field` is a path like `pools[2].addresses[0]` (or relative to one object, `addresses[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in one piece of input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationErrors(vec![FieldError { field: field.into(), message: message.into() }])
    }
}

/// Collects errors under a path prefix, so nested validators only know their own field names.
#[derive(Debug)]
pub struct Collector<'a> {
    prefix: String,
    errors: &'a mut Vec<FieldError>,
}

impl<'a> Collector<'a> {
    pub fn new(errors: &'a mut Vec<FieldError>) -> Self {
        Collector { prefix: String::new(), errors }
    }

    /// A collector for a field below this one (`name` is joined with a dot, or is an index like `[3]`).
    pub fn at<'b>(&'b mut self, name: &str) -> Collector<'b> {
        Collector { prefix: join(&self.prefix, name), errors: self.errors }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: join(&self.prefix, field), message: message.into() });
    }

    pub fn count(&self) -> usize {
        self.errors.len()
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.trim_start_matches('.').to_string()
    } else if name.is_empty() {
        prefix.to_string()
    } else if name.starts_with('[') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots_and_indexes() {
        let mut errs = Vec::new();
        let mut c = Collector::new(&mut errs);
        let mut pools = c.at("pools");
        let mut p = pools.at("[2]");
        p.at("addresses").error("[0]", "bad");
        p.error("name", "bad name");
        c.error("settings.hostname", "x");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["pools[2].addresses[0]", "pools[2].name", "settings.hostname"]);
    }
}
