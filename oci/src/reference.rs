//! Image references as docker reads them. (Skeleton: the oci helper fills this in.)

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
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        Err(format!("{s}: not yet"))
    }
}
