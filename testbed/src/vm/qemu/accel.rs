//! KVM or TCG: which accelerator guests get, found by a trial boot under KVM (or given by
//! `SWARMKIT_ACCEL`), and kept per cluster and for the host until reboot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cmdline::headless_guest;
use super::{Result, io};
use crate::vm::image::Image;
use cluster::paths::ClusterPaths;

const PROBE_TIMEOUT: Duration = Duration::from_secs(6);
pub const ENV_ACCEL: &str = "SWARMKIT_ACCEL";

/// "kvm" when a trial boot under KVM reaches userspace, else "tcg". /dev/kvm existing proves
/// nothing (nested hosts expose one that cannot run a guest), so we boot and look. The answer
/// is kept per cluster and for the host until reboot (/run).
pub fn detect_accel(paths: &ClusterPaths, image: &Image) -> Result<String> {
    if let Ok(a) = std::env::var(ENV_ACCEL)
        && (a == "kvm" || a == "tcg")
    {
        return Ok(a);
    }
    let host_cache = PathBuf::from(cluster::paths::RUN_ROOT).join(".accel");
    let cluster_cache = paths.run_dir().join("accel");
    for f in [&cluster_cache, &host_cache] {
        if let Ok(a) = std::fs::read_to_string(f) {
            return Ok(a.trim().to_string());
        }
    }
    let accel = if Path::new("/dev/kvm").exists() && probe_kvm(image)? {
        "kvm"
    } else {
        "tcg"
    };
    let _ = std::fs::write(&host_cache, accel);
    let _ = std::fs::write(&cluster_cache, accel);
    Ok(accel.to_string())
}

fn probe_kvm(image: &Image) -> Result<bool> {
    let log = std::env::temp_dir().join(format!("swarmkit-kvm-probe-{}.log", std::process::id()));
    let mut child = headless_guest(&image.vmlinux, &image.initramfs)?
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1"])
        .args(["-append", "console=ttyS0 panic=-1 quiet sk.probe=1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("starting the KVM probe"))?;
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < PROBE_TIMEOUT {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains("SWARMKIT-PROBE-OK")) {
            ok = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            ok = std::fs::read_to_string(&log).is_ok_and(|s| s.contains("SWARMKIT-PROBE-OK"));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    Ok(ok)
}
