//! The nft runner: one nftables transaction applied inside a namespace. Below everything
//! that writes nftables (the load balancers, the routing mesh, host ports, the IPsec marks,
//! teardown); above `netns` only.
//!
//! A batch takes one of three paths, chosen per batch by [`NftBatch::run`]:
//!
//! - nf_tables netlink messages ([`netlink`]), when every command of the batch is a typed
//!   [`ops::Op`]: what the nftables load balancer sends once its table exists (a service's
//!   chain, rules and elements, hairpin pairs). libnftables lists every chain of the table
//!   before such a batch, which cost milliseconds at thousands of services; the kernel
//!   resolves the names itself (what remains proportional is its own validation at commit:
//!   see [`netlink`]).
//! - libnftables in-process ([`libnft`]) for every other batch: what has no message builder
//!   here (tables, base chains, set declarations, the skeleton's rules, the IPVS driver's
//!   marks, the routing mesh, host ports, teardown), and for typed batches where the netlink
//!   socket cannot be opened or the send fails before reaching the kernel.
//! - the `nft` binary, spawned in the namespace, where libnftables is not installed.
//!
//! Modules:
//!
//! - [`batch`]: [`NftBatch`], commands collected in order, sent as one transaction;
//! - [`ops`]: the typed commands, which render as JSON and encode as netlink alike;
//! - [`netlink`]: those commands as nf_tables messages in one nfnetlink transaction;
//! - [`expr`]: expression and statement shorthands for the JSON rules;
//! - [`libnft`]: libnftables opened with dlopen, one context per namespace.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;

use crate::netns::{NetNs, enter_raw};

pub mod batch;
pub mod expr;
pub mod libnft;
pub mod netlink;
pub mod ops;

pub use batch::{NftBatch, PRIO_DSTNAT, PRIO_MANGLE, PRIO_SRCNAT};
use libnft::Slot;
use netlink::Failure;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft in namespace {ns}: {source}")]
    Spawn {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the batch in namespace {ns}: {stderr}")]
    Failed { ns: String, stderr: String },
    #[error("encoding nft JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{what} in table ip {table} in namespace {ns}: {}", errno_text(*errno))]
    Refused {
        ns: String,
        table: String,
        /// The op the kernel refused, or the batch itself.
        what: String,
        errno: i32,
    },
    #[error("nf_tables netlink in namespace {ns}: {op}: {source}")]
    Netlink {
        ns: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// "File exists (EEXIST)", as the kernel's answer reads best in an error about one object.
fn errno_text(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{} ({e:?})", e.desc())
}

/// Which way [`NftBatch::run_via`] sends a batch whose commands are all typed ops (any other
/// batch goes through libnftables, or nft).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// As netlink messages, or through libnftables when no netlink socket can be opened in
    /// the namespace (or the send fails before the kernel sees it).
    #[default]
    Auto,
    /// As netlink messages, with no fallback: how a test proves that path.
    Netlink,
    /// Through libnftables (or nft), as every batch went before the netlink path.
    Libnftables,
}

/// Applies `commands` (a JSON batch, or nft syntax as `nft -f` reads it) in `ns` as one
/// transaction: in-process through libnftables when it is installed, else with the binary.
pub fn apply_nft(ns: &NetNs, commands: &str) -> Result<(), NftError> {
    // The slot is held only while the context runs: spawning nft needs no lock.
    let ran = ns.attached(|slot: &mut Slot| {
        slot.get_or_open(ns)
            .map(|ctx| run_in_context(ctx, ns, commands))
    });
    match ran {
        Some(result) => result,
        None => spawn_nft(ns, commands),
    }
}

fn run_in_context(ctx: &mut libnft::Context, ns: &NetNs, commands: &str) -> Result<(), NftError> {
    ctx.run(commands).map_err(|stderr| NftError::Failed {
        ns: ns.name().to_string(),
        stderr,
    })
}

fn spawn_nft(ns: &NetNs, commands: &str) -> Result<(), NftError> {
    let args: &[&str] = if commands.starts_with('{') {
        &["-j", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    run_nft(ns, args, Some(commands.as_bytes())).map(|_| ())
}

/// Runs `nft ARGS` inside `ns` and returns its stdout. The child enters the namespace between
/// fork and exec, so no thread of ours ever changes namespace for it.
pub fn run_nft(ns: &NetNs, args: &[&str], stdin: Option<&[u8]>) -> Result<String, NftError> {
    let spawn_err = |source| NftError::Spawn {
        ns: ns.name().to_string(),
        source,
    };
    let fd = ns.raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: enter_raw only calls setns(2), which is async-signal-safe; `ns` keeps the fd open
    // until the child has exec'd because we wait for it below.
    unsafe {
        cmd.pre_exec(move || enter_raw(fd, CloneFlags::CLONE_NEWNET));
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            ns: ns.name().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sending, here rather than in [`batch`], which only builds: the batch module names nothing
/// above it.
impl NftBatch {
    /// Sends the batch as one transaction in `ns`, the way [`Transport::Auto`] says. An empty
    /// batch sends nothing.
    pub fn run(&self, ns: &NetNs) -> Result<(), NftError> {
        self.run_via(ns, Transport::Auto)
    }

    pub fn run_via(&self, ns: &NetNs, transport: Transport) -> Result<(), NftError> {
        if self.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let ops = match transport {
            Transport::Libnftables => None,
            Transport::Auto | Transport::Netlink => self.ops(),
        };
        let via = match ops {
            Some(ops) => match netlink::apply_in(ns, self.table(), &ops) {
                Ok(()) => "netlink",
                Err(Failure::Unsent(op, source)) if transport == Transport::Auto => {
                    tracing::warn!(ns = ns.name(), op, error = %source, "nf_tables netlink unavailable; sending the batch through libnftables");
                    apply_nft(ns, &self.to_json()?)?;
                    "libnftables"
                }
                Err(failure) => return Err(self.failed(ns, &ops, failure)),
            },
            None => {
                apply_nft(ns, &self.to_json()?)?;
                "libnftables"
            }
        };
        tracing::debug!(ns = ns.name(), table = %self.table(), commands = self.len(), via, took = ?started.elapsed(), "nft batch");
        Ok(())
    }

    fn failed(&self, ns: &NetNs, ops: &[&ops::Op], failure: Failure) -> NftError {
        let refused = |what: String, errno| NftError::Refused {
            ns: ns.name().to_string(),
            table: self.table().to_string(),
            what,
            errno,
        };
        match failure {
            Failure::Refused(i, errno) => refused(ops[i].to_string(), errno),
            Failure::RefusedBatch(errno) => refused(format!("a batch of {} ops", ops.len()), errno),
            Failure::Unsent(op, source) | Failure::Unanswered(op, source) => NftError::Netlink {
                ns: ns.name().to_string(),
                op,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libnft::Context;
    use testkit::netns::Namespaces;

    /// libnftables' context does its work in the namespace it was opened in, from any thread.
    #[test]
    fn runs_json_and_text_in_the_namespace_and_reports_errors() {
        testkit::skip_unless!(testkit::needs_root().or_else(|| {
            (!libnft::available()).then(|| "libnftables is not installed".to_string())
        }));
        let nss = Namespaces::new("libnft");
        let ns = NetNs::create(&nss.name("ns")).unwrap();
        let mut ctx = Context::open_in(&ns).expect("a context");
        ctx.run(r#"{"nftables":[{"add":{"table":{"family":"ip","name":"t"}}}]}"#)
            .unwrap();
        ctx.run("add chain ip t c").unwrap();
        let err = ctx.run("add chain ip no_such_table c").unwrap_err();
        let listed = run_nft(&ns, &["list", "table", "ip", "t"], None).unwrap();
        let host = run_nft(
            &NetNs::of_pid(std::process::id()).unwrap(),
            &["list", "tables"],
            None,
        )
        .unwrap();
        assert!(listed.contains("chain c"));
        assert!(!host.contains("table ip t\n"), "nothing in ours");
        assert!(err.contains("No such file or directory"), "{err}");
    }
}
