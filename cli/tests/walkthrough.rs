//! End-to-end: replay the walkthroughs against real clusters built by the swarmkit binary.
//! They need root (namespaces, netlink, nftables) and the whole system; as a normal user they
//! report that they were skipped and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `swarmkit walkthrough ARGS` from the project root, so ./testplans and ./snapshots are
/// the ones in the source tree, and fails with the transcript on a non-zero exit.
fn walkthrough(args: &[&str]) {
    testkit::require_root!();
    // Bounded: on TERM the walkthrough tears its cluster down and fails, instead of
    // stalling the whole run.
    let out = Command::new("timeout")
        .args(["--kill-after=60", "600", env!("CARGO_BIN_EXE_swarmkit")])
        .current_dir(project_root())
        .env("CI", "true")
        .arg("walkthrough")
        .args(args)
        .output()
        .expect("swarmkit runs");
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "swarmkit walkthrough {} failed ({}):\n{transcript}",
        args.join(" "),
        out.status
    );
    assert!(transcript.contains(" 0 mismatches, "), "{transcript}");
}

#[test]
fn routing_with_swarmkit_cli() {
    walkthrough(&["routing"]);
}

#[test]
fn routing_with_docker_cli() {
    walkthrough(&["routing", "--client", "docker"]);
}

/// A compose stack through the docker CLI (the plan asks for it: `docker stack` runs in the
/// client).
#[test]
fn stack_with_docker_cli() {
    walkthrough(&["stack"]);
}

/// A node dies under the routing mesh, which heals: heartbeats, node loss, replacement.
#[test]
fn failover_with_swarmkit_cli() {
    walkthrough(&["failover"]);
}

/// Three managers: the leader's node dies, another manager leads, the mesh goes on serving,
/// and the old leader rejoins as a follower.
#[test]
fn managers_with_docker_cli() {
    walkthrough(&["managers"]);
}

#[test]
fn overlay_with_swarmkit_cli() {
    walkthrough(&["overlay"]);
}

/// The same walkthrough and snapshot on QEMU guests with their own kernel, where the load
/// balancer is IPVS. Skipped (with the reason) where QEMU is not installed.
#[test]
fn routing_on_qemu_guests() {
    testkit::skip_unless!(testkit::needs_qemu());
    walkthrough(&["routing", "--backend", "qemu"]);
}

/// Encrypted overlays need ESP and GCM, which QEMU guests' kernel has; the capture in the
/// walkthrough's transcript shows ESP only for the encrypted network.
#[test]
fn encrypted_on_qemu_guests() {
    testkit::skip_unless!(testkit::needs_qemu());
    if !Path::new("/usr/bin/tcpdump").exists() {
        eprintln!("skipped: tcpdump is not installed (scripts/setup installs it)");
        return;
    }
    walkthrough(&["encrypted", "--backend", "qemu"]);
}

/// `swarmkit doctor` on a real Docker Swarm (a lab of docker.io's dockerds in namespaces):
/// healthy, then a firewall on node2 dropping VXLAN named with its fix, then healthy again.
/// Skipped (with the reason) where dockerd is not installed.
#[test]
fn doctor_on_a_docker_lab() {
    testkit::skip_unless!(testkit::docker_swarm::unavailable());
    walkthrough(&["doctor"]);
}

#[test]
fn list_shows_every_plan() {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmkit"))
        .current_dir(project_root())
        .args(["walkthrough", "list"])
        .output()
        .expect("swarmkit runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("routing") && text.contains("Routing in swarm"),
        "{text}"
    );
    assert!(text.contains("overlay"), "{text}");
}
