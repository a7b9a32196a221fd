//! Bare boots: guests of an image with a given initrd as their whole userspace, timed until
//! all have powered off (`swarmkit vm bare-boot`, `bench/run.sh qemu`'s baseline).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cmdline::{BOOT_TUNING, GUEST_MEM, MachineArgs, TCG_CPU, headless_guest};
use super::{QemuError, Result, io};
use crate::vm::image::Image;

/// Boots `count` guests of `image` at once under TCG with the guests' own machine, CPU, memory
/// and kernel parameters, but with `initrd` as their whole userspace, and returns when all have
/// powered off: the floor a node's userspace starts from (`bench/run.sh qemu`'s baseline).
/// A guest still running after `BARE_BOOT_TIMEOUT` is killed and reported.
pub fn bare_boots(image: &Image, initrd: &Path, count: usize) -> Result<Duration> {
    let machine = MachineArgs::new(image.machine)?;
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet {BOOT_TUNING} {} {}",
        machine.cmdline, image.append
    );
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..count {
        let child = headless_guest(&image.vmlinux, initrd)?
            .args(["-M", machine.name])
            .args([
                "-accel", "tcg", "-cpu", TCG_CPU, "-smp", "1", "-m", GUEST_MEM,
            ])
            .args(["-append", &cmdline, "-serial", "null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("starting a bare guest"))?;
        children.push(child);
    }
    let mut hung = 0;
    let mut failed = None;
    for mut child in children {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    failed = Some(stderr.trim().to_string());
                }
                break;
            }
            if started.elapsed() > BARE_BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                hung += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(stderr) = failed {
        return Err(QemuError::BareBootFailed(stderr));
    }
    if hung > 0 {
        return Err(QemuError::BareBootHung {
            hung,
            after: BARE_BOOT_TIMEOUT,
        });
    }
    Ok(started.elapsed())
}

const BARE_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
