//! The host's TSC rate, which microvm guests are given on their command line (see
//! `cmdline`): measured once per host boot and kept in /run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{QemuError, Result};

/// The host's TSC rate in kHz, measured once per host boot (kept in /run).
pub(super) fn host_tsc_khz() -> Result<u64> {
    let cache = PathBuf::from(cluster::paths::RUN_ROOT).join(".tsc_khz");
    if let Some(khz) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Ok(khz);
    }
    let khz = measure_tsc_khz();
    if khz == 0 {
        return Err(QemuError::Io {
            what: "measuring the host's TSC rate for microvm guests".into(),
            source: std::io::Error::other("the qemu backend needs an x86_64 host"),
        });
    }
    let _ = std::fs::create_dir_all(cluster::paths::RUN_ROOT);
    let _ = std::fs::write(&cache, khz.to_string());
    Ok(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> u64 {
    // Elsewhere TCG's TSC is some other host counter whose rate we do not know.
    0
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    // A clock reading paired with the TSC, bracketed so that a preemption between the two
    // (likely on a host busy with guests) is noticed and the pair taken again.
    let pair = || loop {
        let (before, now, after) = (tsc(), Instant::now(), tsc());
        if after.wrapping_sub(before) < 100_000 {
            return (now, before / 2 + after / 2);
        }
    };
    let (t0, c0) = pair();
    std::thread::sleep(Duration::from_millis(50));
    let (t1, c1) = pair();
    let ns = (t1 - t0).as_nanos().max(1) as u64;
    // A 50 ms window is good to a few parts in 10^5.
    c1.wrapping_sub(c0).saturating_mul(1_000_000) / ns
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn the_tsc_rate_is_plausible_and_repeatable() {
        let (a, b) = (super::measure_tsc_khz(), super::measure_tsc_khz());
        assert!((100_000..10_000_000).contains(&a), "{a} kHz");
        assert!(a.abs_diff(b) * 100 < a, "{a} kHz then {b} kHz");
    }
}
