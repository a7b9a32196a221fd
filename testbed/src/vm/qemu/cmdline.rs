//! How QEMU is invoked for our guests: the binary, a headless base command booting a kernel
//! directly, the machine and its devices, and what the guest's CPU, memory and kernel
//! parameters are. Shared by node guests (`launch`), the KVM probe (`accel`) and bare boots
//! (`bench`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tsc::host_tsc_khz;
use super::{QemuError, Result};
use crate::vm::image::{Image, Machine};

/// Guest memory: 128 MiB boots; the agent and its tasks want headroom.
pub(super) const GUEST_MEM: &str = "384M";
/// Kernel parameters that cut boot time under TCG: no mitigations or KASLR, no
/// keyboard-controller probing or timer checks, no crypto self-tests (ESP still uses the same
/// algorithms), and none of the hardening that costs an emulated CPU on every page or
/// syscall (zeroing on allocation, read-only remapping, stack offset randomisation, audit,
/// AppArmor/TOMOYO/Landlock). A lab node runs only our own code. Measured with three guests
/// on two cores: 3.5 s -> 2.9 s to init for the hardening alone.
pub(super) const BOOT_TUNING: &str = "mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check cryptomgr.notests random.trust_cpu=on init_on_alloc=0 rodata=off randomize_kstack_offset=off audit=0 lsm=lockdown,yama,integrity";
/// The emulated CPU under TCG: what the guest's code paths use (AES-NI and CLMUL for ESP,
/// RDRAND for the RNG) and no more. `max` adds AVX state that every context switch saves;
/// booting was ~10% slower with it.
pub(super) const TCG_CPU: &str = "qemu64,+aes,+pclmulqdq,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt";

fn qemu_binary() -> Result<PathBuf> {
    [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or(QemuError::NoQemu)
}

/// QEMU with no devices, display or reboot of its own, booting `kernel` directly.
pub(super) fn headless_guest(kernel: &Path, initrd: &Path) -> Result<Command> {
    let mut cmd = Command::new(qemu_binary()?);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd);
    Ok(cmd)
}

/// The image's shared volume as a read-only virtio disk (/dev/vda in the guest); read-only
/// drives take shared locks, so every guest of every cluster can open the same file.
pub(super) fn volume_args(image: &Image, machine: &MachineArgs) -> Vec<String> {
    let Some(v) = &image.volume else {
        return Vec::new();
    };
    vec![
        "-drive".into(),
        format!("file={},if=none,id=vol,format=raw,readonly=on", v.display()),
        "-device".into(),
        format!("{},drive=vol", machine.device("blk", 5)),
    ]
}

/// How a [`Machine`] is spelled on QEMU's command line.
pub(super) struct MachineArgs {
    pub(super) name: &'static str,
    mmio: bool,
    pub(super) cmdline: String,
}

impl MachineArgs {
    pub(super) fn new(machine: Machine) -> Result<Self> {
        Ok(match machine {
            Machine::Pc => MachineArgs {
                name: "pc",
                mmio: false,
                cmdline: "lpj=5000000".into(),
            },
            // microvm has neither HPET nor ACPI PM timer, and under TCG the kernel's TSC
            // calibration against the PIT fails one boot in two (it then hangs without a
            // clocksource). TCG's TSC is the host's, so the host's rate is the right answer.
            Machine::Microvm => MachineArgs {
                name: "microvm",
                mmio: true,
                cmdline: format!("tsc_early_khz={}", host_tsc_khz()?),
            },
        })
    }

    /// A virtio device: on the PC at a fixed PCI slot, so that the guest names its NICs in
    /// the same order every boot (on microvm the creation order does that).
    pub(super) fn device(&self, kind: &str, slot: u8) -> String {
        if self.mmio {
            format!("virtio-{kind}-device")
        } else {
            format!("virtio-{kind}-pci,addr={slot:#x}")
        }
    }
}
