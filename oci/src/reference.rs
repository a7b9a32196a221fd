//! Image references as docker reads them: `nginx` is `docker.io/library/nginx:latest`, a
//! registry is the first component only when it looks like a host (a dot, a port, or
//! `localhost`), and a digest pins the content whatever the tag says.
//!
//! The grammar and docker's normalisation are oci-spec's (`oci_client::Reference`); this type
//! keeps the parts as plain strings for the rest of swarmkit.

use std::fmt;

/// Docker Hub's key in `~/.docker/config.json` and in `X-Registry-Auth`.
pub const DOCKER_HUB_AUTH_SERVER: &str = "https://index.docker.io/v1/";

/// A parsed reference: registry host (Docker Hub's is `docker.io`), repository (with
/// `library/` for official images), tag, digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `s` the docker way. A reference without tag or digest gets the tag `latest`.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        let r = oci_client::Reference::try_from(s).map_err(|e| {
            let hint = if s.chars().any(|c| c.is_ascii_uppercase()) {
                " (repository names must be lowercase)"
            } else {
                ""
            };
            format!("invalid reference format: {s:?}: {e}{hint}")
        })?;
        Ok(ImageRef::from(&r))
    }

    /// The form oci-client talks to registries with.
    pub fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (t, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    /// The host (and port) requests go to: Docker Hub's registry is `index.docker.io`.
    pub fn registry_host(&self) -> &str {
        if self.registry == "docker.io" {
            "index.docker.io"
        } else {
            &self.registry
        }
    }

    /// The key docker's credential stores use for this registry: Docker Hub's
    /// `https://index.docker.io/v1/`, else `HOST[:PORT]`.
    pub fn auth_server(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_AUTH_SERVER
        } else {
            &self.registry
        }
    }

    /// The same image pinned to `digest` (the tag kept, as docker shows a pinned service).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl From<&oci_client::Reference> for ImageRef {
    fn from(r: &oci_client::Reference) -> ImageRef {
        ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = String;
    fn from_str(s: &str) -> Result<ImageRef, String> {
        ImageRef::parse(s)
    }
}

/// The full form: `docker.io/library/nginx:latest`, `host:5000/a/b:tag@sha256:...`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = p("nginx");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/nginx");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        assert_eq!(r.registry_host(), "index.docker.io");
        assert_eq!(r.auth_server(), DOCKER_HUB_AUTH_SERVER);
        assert_eq!(p("user/app:1.2").to_string(), "docker.io/user/app:1.2");
        assert_eq!(
            p("docker.io/library/nginx:1").to_string(),
            "docker.io/library/nginx:1"
        );
    }

    #[test]
    fn registries_with_ports_tags_and_digests() {
        let r = p(&format!("host:5000/a/b:tag@{D}"));
        assert_eq!(r.registry, "host:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("host:5000/a/b:tag@{D}"));
        assert_eq!(r.auth_server(), "host:5000");

        let r = p(&format!("host:5000/a@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("host:5000/a@{D}"));
        assert_eq!(r.to_oci().to_string(), r.to_string());

        let r = p("localhost/x");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "x");
        assert_eq!(r.to_string(), "localhost/x:latest");

        let r = p("127.0.0.1:5000/x:1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.to_oci().to_string(), "127.0.0.1:5000/x:1");
        assert_eq!(
            p("nginx").with_digest(D).to_string(),
            format!("docker.io/library/nginx:latest@{D}")
        );
    }

    #[test]
    fn bad_references_are_named() {
        for bad in ["", "Nginx", "a b", "x@sha256:abc", "host:5000/:tag"] {
            let e = ImageRef::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(ImageRef::parse("Nginx").unwrap_err().contains("lowercase"));
    }
}
