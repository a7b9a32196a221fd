//! How the cluster reaches image registries.
//!
//! A cluster's registry settings (`cluster up --insecure-registry`, `--registry-certs`) reach
//! the manager and every agent in their environment, where `oci::RegistryOptions::from_env`
//! reads them. The manager resolves the digests it pins services to (`/distribution`) from
//! the namespace `ENV_REGISTRY_NETNS` names, when set: on netns and qemu clusters it runs on
//! the host, while the registries the nodes pull from may be on the cluster's underlay, which
//! the host cannot reach.

use std::future::Future;

pub use oci::{ENV_INSECURE_REGISTRIES, ENV_REGISTRY_CERTS};
/// The network namespace (by name, under /run/netns) the manager reaches registries from.
pub const ENV_REGISTRY_NETNS: &str = "SWARMKIT_REGISTRY_NETNS";

/// The manifest digest `image` names now, asked of its registry from where this process
/// reaches registries (see `ENV_REGISTRY_NETNS`).
pub async fn resolve_digest(
    image: &str,
    credentials: Option<oci::Credentials>,
) -> Result<String, oci::PullError> {
    let opts = oci::RegistryOptions::from_env();
    match std::env::var(ENV_REGISTRY_NETNS) {
        Ok(ns) if !ns.is_empty() => {
            let image = image.to_string();
            in_netns(&ns, move || async move {
                oci::resolve_digest(&image, credentials.as_ref(), &opts).await
            })
            .await
            .map_err(oci::PullError::Other)?
        }
        _ => oci::resolve_digest(image, credentials.as_ref(), &opts).await,
    }
}

/// Runs the future `make` returns to completion inside network namespace `name`, so that
/// every socket it opens is made there: on a thread of its own that entered the namespace,
/// under a current-thread runtime of that thread's (threads it starts, e.g. for name
/// lookups, inherit the namespace). A tokio worker never enters a namespace: every task it
/// ran afterwards would run in it.
pub async fn in_netns<T, F, M>(name: &str, make: M) -> Result<T, String>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = T>,
    T: Send + 'static,
{
    let ns = netcore::netns::NetNs::open(name)
        .map_err(|e| format!("reaching registries from {ENV_REGISTRY_NETNS}={name}: {e}"))?;
    let ns_name = name.to_string();
    tokio::task::spawn_blocking(move || {
        ns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("a runtime in network namespace {ns_name}: {e}"))?;
            Ok(rt.block_on(make()))
        })
        .map_err(|e| e.to_string())?
    })
    .await
    .map_err(|e| format!("the thread reaching registries from network namespace {name}: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What runs in the namespace sees its links, not the host's.
    #[tokio::test]
    async fn a_future_runs_inside_the_namespace() {
        testkit::require_root!();
        let nss = testkit::netns::Namespaces::new("regns");
        let name = nss.name("r");
        netcore::netns::NetNs::create(&name).expect("create");
        let host = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let inside = in_netns(&name, || async {
            // A socket made by the runtime there, and the thread's own namespace.
            let sock = tokio::net::TcpListener::bind("0.0.0.0:0").await;
            (
                sock.is_ok(),
                std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            )
        })
        .await
        .expect("ran");
        assert!(inside.0);
        assert_ne!(inside.1, host);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            host,
            "the caller stays where it was"
        );
        assert!(in_netns("sk-no-such-ns", || async {}).await.is_err());
    }
}
