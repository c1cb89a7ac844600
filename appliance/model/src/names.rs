//! Object names are DNS labels (RFC 1123): they end up in DNS names, metrics labels and URLs.

/// Why `name` is not a DNS label, or `None` when it is one.
pub fn dns_label_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.len() > 63 {
        return Some("must be at most 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("must contain only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit");
    }
    None
}

/// Why `name` is not a valid host name (dot-separated DNS labels, at most 253 characters).
pub fn hostname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some("must be at most 253 characters".into());
    }
    for label in name.split('.') {
        if let Some(p) = dns_label_problem(label) {
            return Some(format!("label '{label}' {p}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(dns_label_problem("web-1"), None);
        assert!(dns_label_problem("").is_some());
        assert!(dns_label_problem("-a").is_some());
        assert!(dns_label_problem("a-").is_some());
        assert!(dns_label_problem("Web").is_some());
        assert!(dns_label_problem("a_b").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert_eq!(hostname_problem("edge-1.example.net"), None);
        assert!(hostname_problem("edge..net").is_some());
    }
}
