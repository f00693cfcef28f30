//! Kubernetes name and label rules (apimachinery `validation.go`), returning
//! the same explanations Kubernetes gives.

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `None` when valid, else the reason.
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!is_label(s)).then(|| DNS1123_LABEL_MSG.to_owned())
}

pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    (!s.split('.').all(is_label)).then(|| DNS1123_SUBDOMAIN_MSG.to_owned())
}

pub fn dns1035_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let ok = is_label(s) && s.as_bytes()[0].is_ascii_lowercase();
    (!ok).then(|| DNS1035_LABEL_MSG.to_owned())
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Label and annotation keys: `[prefix/]name`.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(e) = dns1123_subdomain(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    (!is_name_part(name)).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_owned()
    })
}

pub fn label_value(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    (!is_name_part(s)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned()
    })
}

/// ConfigMap and Secret keys.
pub fn config_key(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Some("must not be '.' or '..' or start with '..'".into());
    }
    (!s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))).then(|| {
        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_owned()
    })
}

/// Named ports (IANA service names).
pub fn port_name(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !b.iter().any(u8::is_ascii_lowercase) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") || s.starts_with('-') || s.ends_with('-') {
        return Some("must not contain consecutive hyphens or begin or end with a hyphen".into());
    }
    None
}

/// Environment variable names.
pub fn env_var_name(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic() && c != b'=') && !s.as_bytes()[0].is_ascii_digit();
    (!ok).then(|| {
        "a valid environment variable name must consist only of printable ASCII characters other than '=' and not start with a digit".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label("-a").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(dns1123_subdomain("a_b").is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(dns1035_label("abc1").is_none());
    }

    #[test]
    fn labels_and_keys() {
        assert!(qualified_name("app").is_none());
        assert!(qualified_name("kubernetes.io/arch").is_none());
        assert!(qualified_name("/x").is_some());
        assert!(qualified_name("a/b/c").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_3").is_none());
        assert!(label_value("bad value").is_some());
        assert!(config_key("app.conf").is_none());
        assert!(config_key("a/b").is_some());
        assert!(port_name("http").is_none());
        assert!(port_name("80").is_some());
        assert!(env_var_name("PATH").is_none());
        assert!(env_var_name("1X").is_some());
    }
}
