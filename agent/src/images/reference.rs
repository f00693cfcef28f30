//! Image references as Docker and containerd normalise them:
//! `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {0:?}")]
pub struct InvalidReference(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, InvalidReference> {
        let bad = || InvalidReference(s.to_string());
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_ascii_uppercase() && !s.contains('@')) {
            return Err(bad());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) if d.starts_with("sha256:") && d.len() == 71 => (r, Some(d.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return Err(bad());
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let valid_path = repository.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !valid_path {
            return Err(bad());
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Normalises a reference to its full form, or returns it unchanged when it
/// does not parse (so that lookups by image ID still work).
pub fn normalize(s: &str) -> String {
    Reference::parse(s).map(|r| r.to_string()).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("kedge.local/busybox:latest"), "kedge.local/busybox:latest");
        assert_eq!(normalize("127.0.0.1:5000/team/app"), "127.0.0.1:5000/team/app:latest");
        assert_eq!(normalize("localhost/app:v1"), "localhost/app:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("busybox@{d}")), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse("127.0.0.1:5000/busybox:1").expect("parses");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "busybox", Some("1"))
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Busybox", "a b", "busybox:", "busybox@sha256:12", "a//b", "reg.io/"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
