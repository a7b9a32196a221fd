//! Images as the API takes them: the references services name, the digests
//! `/distribution` reports for pinning them (as dockerd, whose clients pin an image at
//! `service create` by asking it), and the registry credentials clients send with a service
//! (`X-Registry-Auth`, docker's `--with-registry-auth`).

use axum::Json;
use axum::extract::Path;
use axum::http::HeaderMap;
use base64::Engine;
use bollard::models::{DistributionInspect, OciDescriptor, OciPlatform};
use sha2::Digest;

use super::error::{ApiError, ApiResult};

/// The header docker's clients carry registry credentials in: base64url of JSON
/// `{"username","password","serveraddress"}`.
pub const AUTH_HEADER: &str = "X-Registry-Auth";

/// A service's image: a built-in one, or any reference a registry could serve.
pub fn check_reference(image: &str) -> ApiResult<()> {
    if crate::images::resolve(image).is_some() {
        return Ok(());
    }
    parse(image).map(|_| ())
}

fn parse(image: &str) -> ApiResult<oci::ImageRef> {
    oci::ImageRef::parse(image).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid reference format: {image:?} is not an image reference ({e}): give \
             NAME[:TAG][@DIGEST] in lower case, e.g. nginx:1.27 or registry.example.com:5000/team/app:v2"
        ))
    })
}

/// The credentials sent with a service create or update, kept as sent: None when there are
/// none, or when they are empty (docker's CLI sends `{}` for `--with-registry-auth` without
/// a login); refused when they do not decode, which would otherwise surface only as every
/// task's failed pull.
pub fn service_auth(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(AUTH_HEADER) else {
        return Ok(None);
    };
    let refused = |why: String| {
        ApiError::BadRequest(format!(
            "the {AUTH_HEADER} header does not decode ({why}): it is base64url JSON of \
             {{\"username\",\"password\",\"serveraddress\"}}, as docker service create \
             --with-registry-auth sends it; log in again (docker login) or leave the flag out"
        ))
    };
    let value = value
        .to_str()
        .map_err(|_| refused("it is not text".into()))?
        .trim();
    if is_empty_auth(value) {
        return Ok(None);
    }
    oci::decode_registry_auth(value).map_err(refused)?;
    Ok(Some(value.to_string()))
}

/// No credentials at all: an empty header, or one that decodes to an object with no value.
fn is_empty_auth(value: &str) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if value.is_empty() {
        return true;
    }
    let Some(bytes) = [URL_SAFE, URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|e| e.decode(value).ok())
    else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(o)) => o
            .values()
            .all(|v| v.is_null() || v.as_str().is_some_and(str::is_empty)),
        Ok(serde_json::Value::Null) => true,
        _ => false,
    }
}

/// The digest an image names now, as `docker service create` asks for it before sending the
/// spec (which then names `image:tag@digest`). Built-in images need no registry: their digest
/// is one of their own name's. Credentials that do not decode are ignored, as dockerd
/// ignores them here; the registry then answers as to anyone.
pub async fn distribution(
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<DistributionInspect>> {
    let name = name.strip_suffix("/json").unwrap_or(&name);
    if let Some(builtin) = crate::images::resolve(name) {
        let hex = hex::encode(sha2::Sha256::digest(format!(
            "swarmkit-builtin:{}",
            builtin.name()
        )));
        return Ok(Json(DistributionInspect {
            descriptor: OciDescriptor {
                media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                digest: Some(format!("sha256:{hex}")),
                size: Some(1024),
                ..Default::default()
            },
            platforms: vec![OciPlatform {
                architecture: Some("amd64".into()),
                os: Some("linux".into()),
                ..Default::default()
            }],
        }));
    }
    let reference = parse(name)?;
    let credentials = headers
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !is_empty_auth(v.trim()))
        .and_then(|v| oci::decode_registry_auth(v.trim()).ok());
    let digest = crate::registry::resolve_digest(name, credentials)
        .await
        .map_err(|e| pull_error(name, &reference.registry, &e))?;
    // The platforms are the manifest list's, which resolution does not report: none, and
    // docker's CLI then leaves the service's placement alone.
    Ok(Json(DistributionInspect {
        descriptor: OciDescriptor {
            digest: Some(digest),
            ..Default::default()
        },
        platforms: Vec::new(),
    }))
}

/// A registry's refusal in the words docker users know, with its status: no such image
/// (404), credentials missing or wrong (401) or without access (403); anything else is the
/// registry out of reach (502), with what to check.
fn pull_error(image: &str, registry: &str, e: &oci::PullError) -> ApiError {
    use oci::PullError as P;
    match e {
        P::BadReference(_) => ApiError::BadRequest(e.to_string()),
        P::NotFound { .. } => ApiError::NotFound(format!(
            "{e}: registry {registry} has no manifest for {image}"
        )),
        P::Unauthorized { .. } => ApiError::Unauthorized(e.to_string()),
        P::Unreachable { .. } => ApiError::BadGateway(e.to_string()),
        _ => ApiError::BadGateway(format!(
            "registry {registry} could not resolve {image}: {e}. If it serves plain HTTP, name \
             it at cluster up (--insecure-registry {registry}); if its certificate is signed by \
             a CA of your own, give --registry-certs DIR with {registry}/ca.crt in it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, value.parse().unwrap());
        h
    }

    #[test]
    fn empty_credentials_are_none_and_garbage_is_refused() {
        assert_eq!(service_auth(&HeaderMap::new()).unwrap(), None);
        // `{}`, as docker's CLI sends it without a login, in either alphabet.
        for empty in ["", "e30=", "e30", "eyJ1c2VybmFtZSI6IiJ9"] {
            assert_eq!(service_auth(&headers(empty)).unwrap(), None, "{empty}");
        }
        match service_auth(&headers("%%%not-base64")) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains(AUTH_HEADER), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_failures_map_to_docker_statuses() {
        use axum::http::StatusCode;
        use oci::PullError as P;
        let status = |e: P| pull_error("r:5000/a:1", "r:5000", &e).status();
        let reference = "r:5000/a:1".to_string();
        assert_eq!(
            status(P::NotFound {
                reference: reference.clone()
            }),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(P::Unauthorized {
                reference,
                registry: "r:5000".into(),
                detail: "401".into(),
                hint: "log in".into()
            }),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(P::BadReference("x".into())), StatusCode::BAD_REQUEST);
        let m = pull_error("r:5000/a:1", "r:5000", &P::Other("timed out".into())).to_string();
        assert!(
            m.contains("r:5000") && m.contains("--insecure-registry"),
            "{m}"
        );
    }

    #[test]
    fn builtins_need_no_registry() {
        for image in ["whoami", "postgres:13", "docker.io/library/drupal"] {
            assert!(check_reference(image).is_ok(), "{image}");
        }
    }
}
