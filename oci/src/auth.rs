//! Registry credentials. (Skeleton: the oci helper fills this in.)

/// A user name and password (or identity token) for one registry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The registry these are for, as docker names it (`HOST[:PORT]`, or Docker Hub's index).
    pub server: String,
}

/// The credentials `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`) holds for the
/// registry of `image`, as the docker CLI reads them (`auths.<server>.auth`, base64 `user:pass`).
pub fn docker_config_credentials(_image: &str) -> Option<Credentials> {
    None
}

/// `X-Registry-Auth`: base64url JSON `{"username","password","serveraddress"}`.
pub fn encode_registry_auth(_c: &Credentials) -> String {
    String::new()
}

pub fn decode_registry_auth(_header: &str) -> Result<Credentials, String> {
    Err("not yet".into())
}
