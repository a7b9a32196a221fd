//! Registry credentials the docker way: the CLI's `config.json`, and the `X-Registry-Auth`
//! header that `docker service create --with-registry-auth` sends with a service.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use std::path::PathBuf;

use crate::ImageRef;

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
pub fn docker_config_credentials(image: &str) -> Option<Credentials> {
    let path = docker_config_path()?;
    let text = std::fs::read_to_string(&path).ok()?;
    let r = ImageRef::parse(image).ok()?;
    credentials_from_config(&text, r.auth_server()).unwrap_or_else(|e| {
        tracing::debug!("{}: {e}", path.display());
        None
    })
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".docker/config.json"))
}

/// The entry of a `config.json` for `server`. Docker also matches keys written as URLs
/// (`https://host:5000/v1/`), which older CLIs wrote.
pub(crate) fn credentials_from_config(
    text: &str,
    server: &str,
) -> Result<Option<Credentials>, String> {
    let config: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let auths = config.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|auths| {
        auths.get(server).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| strip_url(k) == strip_url(server))
                .map(|(_, v)| v)
        })
    });
    let Some(entry) = entry else {
        let helper = config
            .get("credHelpers")
            .and_then(|h| h.get(server))
            .or_else(|| config.get("credsStore"));
        if let Some(h) = helper {
            tracing::debug!(
                "credential helper {h} for {server} is not supported; pulling anonymously"
            );
        }
        return Ok(None);
    };
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (mut username, mut password) = (field("username"), field("password"));
    let auth = field("auth");
    if !auth.is_empty() {
        let raw = decode_any_base64(&auth).map_err(|e| format!("auths.{server}.auth: {e}"))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| format!("auths.{server}.auth: not UTF-8 after base64"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| format!("auths.{server}.auth: not user:password"))?;
        (username, password) = (u.to_string(), p.to_string());
    }
    let token = field("identitytoken");
    if password.is_empty() && !token.is_empty() {
        password = token;
    }
    if username.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username,
        password,
        server: server.to_string(),
    }))
}

/// `https://host:5000/v1/` → `host:5000`, as docker's `ConvertToHostname`.
fn strip_url(s: &str) -> &str {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or(s)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    serveraddress: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    identitytoken: String,
}

/// `X-Registry-Auth`: base64url JSON `{"username","password","serveraddress"}`.
pub fn encode_registry_auth(c: &Credentials) -> String {
    let json = serde_json::to_vec(&AuthConfig {
        username: c.username.clone(),
        password: c.password.clone(),
        serveraddress: c.server.clone(),
        identitytoken: String::new(),
    })
    .expect("AuthConfig serialises");
    URL_SAFE.encode(json)
}

/// Reads an `X-Registry-Auth` header: base64url (padded or not; standard base64 too, as
/// docker accepts) of the JSON docker's `AuthConfig` is.
pub fn decode_registry_auth(header: &str) -> Result<Credentials, String> {
    let header = header.trim();
    if header.is_empty() {
        return Err("X-Registry-Auth is empty".into());
    }
    let raw = decode_any_base64(header).map_err(|e| format!("X-Registry-Auth: {e}"))?;
    let a: AuthConfig = serde_json::from_slice(&raw).map_err(|e| {
        format!("X-Registry-Auth: not the JSON of an auth config ({{\"username\",\"password\",\"serveraddress\"}}): {e}")
    })?;
    let password = if a.password.is_empty() {
        a.identitytoken
    } else {
        a.password
    };
    Ok(Credentials {
        username: a.username,
        password,
        server: a.serveraddress,
    })
}

/// Base64 in any of the four alphabets/paddings docker's encoders produced over time.
fn decode_any_base64(s: &str) -> Result<Vec<u8>, String> {
    let mut first = None;
    for engine in [&URL_SAFE, &URL_SAFE_NO_PAD, &STANDARD, &STANDARD_NO_PAD] {
        match engine.decode(s) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(format!(
        "not base64: {}",
        first.map(|e| e.to_string()).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str, s: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
            server: s.into(),
        }
    }

    #[test]
    fn registry_auth_round_trips() {
        let c = creds("alice", "p?ss>word~", "reg.example:5000");
        let h = encode_registry_auth(&c);
        assert!(!h.contains('+') && !h.contains('/'), "{h}");
        assert_eq!(decode_registry_auth(&h).unwrap(), c);
    }

    #[test]
    fn registry_auth_accepts_every_base64_docker_sent() {
        let json = br#"{"username":"bob","password":"s3cr?t>>","serveraddress":"https://index.docker.io/v1/"}"#;
        let want = creds("bob", "s3cr?t>>", DOCKER_HUB);
        for engine in [&URL_SAFE, &URL_SAFE_NO_PAD, &STANDARD, &STANDARD_NO_PAD] {
            let h = engine.encode(json);
            assert_eq!(decode_registry_auth(&h).unwrap(), want, "{h}");
        }
        // An identity token instead of a password.
        let h =
            URL_SAFE.encode(br#"{"username":"<token>","identitytoken":"tok","serveraddress":"r"}"#);
        assert_eq!(
            decode_registry_auth(&h).unwrap(),
            creds("<token>", "tok", "r")
        );
    }

    const DOCKER_HUB: &str = crate::reference::DOCKER_HUB_AUTH_SERVER;

    #[test]
    fn registry_auth_errors_name_the_problem() {
        assert!(decode_registry_auth("").unwrap_err().contains("empty"));
        assert!(
            decode_registry_auth("%%%")
                .unwrap_err()
                .contains("not base64")
        );
        let e = decode_registry_auth(&URL_SAFE.encode("[1]")).unwrap_err();
        assert!(e.contains("not the JSON"), "{e}");
    }

    #[test]
    fn config_json_auths() {
        let auth = STANDARD.encode("carol:pa:ss");
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "reg:5000": {{"username": "dave", "password": "pw"}},
                "https://old:443/v1/": {{"auth": "{auth}"}},
                "empty:1": {{}}
            }}, "credHelpers": {{"gcr.io": "gcloud"}}}}"#
        );
        assert_eq!(
            credentials_from_config(&text, DOCKER_HUB).unwrap(),
            Some(creds("carol", "pa:ss", DOCKER_HUB))
        );
        assert_eq!(
            credentials_from_config(&text, "reg:5000").unwrap(),
            Some(creds("dave", "pw", "reg:5000"))
        );
        assert_eq!(
            credentials_from_config(&text, "old:443").unwrap(),
            Some(creds("carol", "pa:ss", "old:443"))
        );
        assert_eq!(credentials_from_config(&text, "empty:1").unwrap(), None);
        assert_eq!(credentials_from_config(&text, "gcr.io").unwrap(), None);
        assert_eq!(credentials_from_config(&text, "other").unwrap(), None);
        let bad = r#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#; // "nocolon"
        assert!(
            credentials_from_config(bad, "r")
                .unwrap_err()
                .contains("user:password")
        );
    }

    #[test]
    fn config_json_from_docker_config_dir() {
        let dir = std::env::temp_dir().join(format!("oci-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let auth = STANDARD.encode("erin:pw");
        std::fs::write(
            dir.join("config.json"),
            format!(r#"{{"auths": {{"myreg:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        // SAFETY: the only test of this crate that reads or writes DOCKER_CONFIG.
        unsafe { std::env::set_var("DOCKER_CONFIG", &dir) };
        let got = docker_config_credentials("myreg:5000/app:1");
        let none = docker_config_credentials("nginx");
        unsafe { std::env::remove_var("DOCKER_CONFIG") };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, Some(creds("erin", "pw", "myreg:5000")));
        assert_eq!(none, None);
    }
}
