//! `cluster up --backend ssh --inventory hosts.toml`: nodes that are existing Linux hosts.
//!
//! ```toml
//! [[host]]
//! name = "node1"                          # optional; default nodeN in file order
//! address = "10.1.2.3:22"                 # where SSH answers, host[:port]
//! user = "root"                           # optional; default root
//! key = "/root/.ssh/id_ed25519"           # client key (OpenSSH format, mode 0600)
//! host_key = "ssh-ed25519 AAAA..."        # the host's key, pinned: nothing else is accepted
//! node_addr = "10.1.2.3/24"               # optional; underlay address for VXLAN (default: address's IP /24)
//! binary = "/usr/local/bin/swarmkit"      # optional; else this binary is uploaded
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::node::VmNode;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("reading inventory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("inventory {path}, host {host}: {message}")]
    Host {
        path: PathBuf,
        host: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: Vec<Host>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    name: Option<String>,
    address: String,
    user: Option<String>,
    key: PathBuf,
    host_key: String,
    node_addr: Option<String>,
    binary: Option<String>,
}

/// Reads the inventory into node records (the same shape QEMU guests get).
pub fn load(path: &Path, lb: Option<String>) -> Result<Vec<VmNode>, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.into(),
        source,
    })?;
    let file: File = toml::from_str(&text).map_err(|e| InventoryError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    if file.host.is_empty() {
        return Err(InventoryError::Parse {
            path: path.into(),
            message: "no [[host]] entries".into(),
        });
    }
    let mut nodes: Vec<VmNode> = Vec::new();
    for (i, h) in file.host.into_iter().enumerate() {
        let name = h.name.clone().unwrap_or_else(|| format!("node{}", i + 1));
        let bad = |message: String| InventoryError::Host {
            path: path.into(),
            host: name.clone(),
            message,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("name must be letters, digits, '-' or '_'".into()));
        }
        if nodes.iter().any(|n| n.name == name) {
            return Err(bad("name used twice".into()));
        }
        crate::ssh::parse_public(&h.host_key)
            .map_err(|e| bad(format!("host_key is not an OpenSSH public key: {e}")))?;
        let ssh = if h.address.contains(':') {
            h.address.clone()
        } else {
            format!("{}:22", h.address)
        };
        let addr = match &h.node_addr {
            Some(a) if a.contains('/') => a
                .parse::<Ipv4Net>()
                .map_err(|e| bad(format!("node_addr {a:?}: {e}")))?,
            Some(a) => Ipv4Net::new(
                a.parse::<Ipv4Addr>()
                    .map_err(|e| bad(format!("node_addr {a:?}: {e}")))?,
                24,
            )
            .map_err(|e| bad(e.to_string()))?,
            None => {
                let host = ssh.rsplit_once(':').map(|(h, _)| h).unwrap_or(&ssh);
                let ip: Ipv4Addr = host.parse().map_err(|_| {
                    bad("address is not an IPv4 address: give node_addr for VXLAN".into())
                })?;
                Ipv4Net::new(ip, 24).map_err(|e| bad(e.to_string()))?
            }
        };
        nodes.push(VmNode {
            name,
            addr,
            ssh,
            user: h.user.unwrap_or_else(|| "root".into()),
            host_key: h.host_key.trim().to_string(),
            key_file: h.key,
            pid: None,
            lb: lb.clone(),
            mesh: None,
            binary: h.binary,
            launch: None,
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sktest-inventory-{}-{}.toml",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_and_pins() {
        let key = crate::ssh::public_openssh(&crate::ssh::generate_host_key().public);
        let p = write(&format!(
            "[[host]]\naddress = \"10.0.9.1\"\nkey = \"/k\"\nhost_key = \"{key}\"\n\
             [[host]]\nname = \"b\"\naddress = \"127.0.0.1:2222\"\nkey = \"/k\"\nhost_key = \"{key}\"\nnode_addr = \"192.168.7.2/24\"\n"
        ));
        let nodes = load(&p, None).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(nodes[0].name, "node1");
        assert_eq!(nodes[0].ssh, "10.0.9.1:22");
        assert_eq!(nodes[0].addr.to_string(), "10.0.9.1/24");
        assert_eq!(nodes[1].name, "b");
        assert_eq!(nodes[1].addr.to_string(), "192.168.7.2/24");
        assert_eq!(nodes[1].user, "root");
    }

    #[test]
    fn a_host_without_a_pinned_key_is_rejected() {
        let p = write("[[host]]\naddress = \"10.0.9.1\"\nkey = \"/k\"\n");
        let err = load(&p, None).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(
            matches!(&err, InventoryError::Parse { message, .. } if message.contains("host_key")),
            "{err:?}"
        );
    }
}
