//! Booting cluster nodes as QEMU guests.
//!
//! QEMU runs in the host's root namespace, but its underlay NIC is a tap device that we open
//! *inside the cluster's underlay namespace* and hand to QEMU as an inherited fd: the tap lives
//! on the cluster's bridge, never in the root namespace, and vanishes when QEMU exits. Keeping
//! QEMU itself in the root namespace puts its user-mode NIC's SSH port forward
//! (`hostfwd=tcp:127.0.0.1:PORT-:22`, `restrict=on`) on the host's loopback, where the CLI and
//! the `__vmhost` daemon can reach it with ordinary sockets.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netcore::link::Links;
use netcore::netns::NetNs;
use serde::{Deserialize, Serialize};

use super::cpio::CpioWriter;
use super::image::{Image, Machine};
use crate::ssh;
use cluster::paths::{ClusterPaths, OWNER_ENV};

/// Guest memory: 128 MiB boots; the agent and its tasks want headroom.
const GUEST_MEM: &str = "384M";
/// The user-mode NIC's private subnet, chosen away from the overlay pools (10.0.0.0/8) and
/// the underlay (192.168.0.0/24).
const MGMT_NET: &str = "172.31.254.0/24";
const MGMT_GUEST: &str = "172.31.254.15/24";
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);
/// Kernel parameters that cut boot time under TCG: no mitigations or KASLR, no
/// keyboard-controller probing or timer checks, no crypto self-tests (ESP still uses the same
/// algorithms), and none of the hardening that costs an emulated CPU on every page or
/// syscall (zeroing on allocation, read-only remapping, stack offset randomisation, audit,
/// AppArmor/TOMOYO/Landlock). A lab node runs only our own code. Measured with three guests
/// on two cores: 3.5 s -> 2.9 s to init for the hardening alone.
const BOOT_TUNING: &str = "mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check cryptomgr.notests random.trust_cpu=on init_on_alloc=0 rodata=off randomize_kstack_offset=off audit=0 lsm=lockdown,yama,integrity";
/// The emulated CPU under TCG: what the guest's code paths use (AES-NI and CLMUL for ESP,
/// RDRAND for the RNG) and no more. `max` adds AVX state that every context switch saves;
/// booting was ~10% slower with it.
const TCG_CPU: &str = "qemu64,+aes,+pclmulqdq,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt";
pub const ENV_ACCEL: &str = "SWARMKIT_ACCEL";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)")]
    NoQemu,
    #[error("creating tap {name} in the underlay namespace: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NetNs(#[from] netcore::netns::NetNsError),
    #[error(transparent)]
    Link(#[from] netcore::link::LinkError),
    #[error("node {node} did not answer SSH within {after:?}; see {console}")]
    SshTimeout {
        node: String,
        after: Duration,
        console: PathBuf,
    },
    #[error("node {node}: QEMU exited during boot; see {log}")]
    Died { node: String, log: PathBuf },
    #[error(
        "{hung} bare guest(s) had not powered off after {after:?}: the initrd's /init must power off"
    )]
    BareBootHung { hung: usize, after: Duration },
    #[error("a bare guest's QEMU failed: {0}")]
    BareBootFailed(String),
}

type Result<T, E = QemuError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// How to reach one whole-machine node; kept in the run directory as `vm/<node>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmNode {
    pub name: String,
    /// Underlay address (the VTEP) with its prefix.
    pub addr: Ipv4Net,
    /// host:port of its SSH server as seen from the host.
    pub ssh: String,
    pub user: String,
    /// The pinned host key, OpenSSH public-key line.
    pub host_key: String,
    /// Client key to log in with (per cluster, or given by an inventory).
    pub key_file: PathBuf,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub lb: Option<String>,
    /// Where its agent balances published ports; None: the agent's default. A guest's
    /// namespace is the project's alone, a host's (ssh backend) is its owner's.
    #[serde(default)]
    pub mesh: Option<netcore::ingress::MeshLayout>,
    /// Path of the swarmkit binary on the node; None: upload this one.
    #[serde(default)]
    pub binary: Option<String>,
    /// How to boot it again; None for hosts (the ssh backend).
    #[serde(default)]
    pub launch: Option<Launch>,
}

/// How a guest was started, kept so that `node start` boots the same guest again (same host
/// key, SSH port, MAC and addresses) after `node kill`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Launch {
    /// QEMU's command line; its underlay NIC is the inherited fd 3.
    pub argv: Vec<String>,
    /// The tap on the cluster's bridge, opened anew for every launch.
    pub tap: String,
}

impl Launch {
    /// Opens the tap in `underlay`, plugs it into `bridge` and starts QEMU; returns its pid.
    /// The tap vanishes when QEMU exits.
    pub async fn spawn(
        &self,
        paths: &ClusterPaths,
        node: &str,
        underlay: &NetNs,
        bridge: &str,
    ) -> Result<u32> {
        let tap_fd = open_tap(underlay, &self.tap)?;
        let links = Links::new(underlay)?;
        let ti = links.require(&self.tap).await?;
        let bi = links.require(bridge).await?;
        links.set_master(ti, bi).await?;
        links.set_up(ti).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.log_file(&format!("{node}.qemu")))
            .map_err(io("qemu log"))?;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env(OWNER_ENV, &paths.name)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("qemu log"))?)
            .stderr(log)
            .process_group(0);
        let raw = tap_fd.as_raw_fd();
        // SAFETY: dup2/fcntl are async-signal-safe; `tap_fd` stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if raw == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io("starting qemu"))?;
        drop(tap_fd);
        Ok(child.id())
    }
}

pub fn vm_dir(paths: &ClusterPaths) -> PathBuf {
    paths.run_dir().join("vm")
}

pub fn client_key_file(paths: &ClusterPaths) -> PathBuf {
    paths.state_dir().join("ssh").join("id_ed25519")
}

pub fn save_node(paths: &ClusterPaths, node: &VmNode) -> std::io::Result<()> {
    let dir = vm_dir(paths);
    std::fs::create_dir_all(&dir)?;
    let bytes = serde_json::to_vec_pretty(node).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{}.json", node.name)), bytes)
}

pub fn load_node(paths: &ClusterPaths, name: &str) -> std::io::Result<VmNode> {
    let bytes = std::fs::read(vm_dir(paths).join(format!("{name}.json")))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

pub fn load_nodes(paths: &ClusterPaths) -> Vec<VmNode> {
    let mut out: Vec<VmNode> = std::fs::read_dir(vm_dir(paths))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by_key(|n: &VmNode| crate::vm::natural(&n.name));
    out
}

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

/// QEMU with no devices, display or reboot of its own, booting `kernel` directly.
fn headless_guest(kernel: &Path, initrd: &Path) -> Result<Command> {
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

/// Opens a tap device in `ns` (attached later to the bridge); closing the fd removes it.
fn open_tap(ns: &NetNs, name: &str) -> Result<OwnedFd> {
    let tap_err = |source| QemuError::Tap {
        name: name.to_string(),
        source,
    };
    let owned = name.to_string();
    ns.run(move || -> std::io::Result<OwnedFd> {
        // SAFETY: plain open(2); the fd is owned right away.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        let n = owned.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&owned.as_bytes()[..n]);
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is laid out as.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    })?
    .map_err(tap_err)
}

/// Tap names must fit IFNAMSIZ and still say which cluster they belong to.
fn tap_name(cluster: &str, i: usize) -> String {
    let c: String = cluster.chars().take(9).collect();
    format!("{c}-t{i}")
}

/// The guest's private bits, appended to the shared initramfs as a second archive (the
/// kernel unpacks concatenated archives in order, later files winning).
fn node_initrd(base: &Path, dest: &Path, host_key: &[u8], authorized: &str) -> Result<()> {
    std::fs::copy(base, dest).map_err(io(dest.display().to_string()))?;
    // It is about to hold the guest's private host key.
    std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io(dest.display().to_string()))?;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(dest)
        .map_err(io(dest.display().to_string()))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(f));
    let r: std::io::Result<()> = (|| {
        w.dir("etc/dropbear", 0o700)?;
        w.file("etc/dropbear/host_key", 0o600, host_key)?;
        w.dir("root/.ssh", 0o700)?;
        w.file("root/.ssh/authorized_keys", 0o600, authorized.as_bytes())?;
        w.finish()?.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })();
    r.map_err(io(dest.display().to_string()))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("picking a free port"))?;
    Ok(l.local_addr().map_err(io("picking a free port"))?.port())
}

pub struct BootSpec<'a> {
    pub paths: &'a ClusterPaths,
    pub image: &'a Image,
    pub accel: &'a str,
    pub underlay: &'a NetNs,
    pub bridge: &'a str,
    pub name: String,
    pub index: usize,
    pub addr: Ipv4Net,
    pub authorized_key: String,
    pub lb: Option<String>,
}

/// Starts one guest and returns how to reach it (its SSH server is not up yet).
pub async fn boot(spec: BootSpec<'_>) -> Result<VmNode> {
    let paths = spec.paths;
    let dir = vm_dir(paths);
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    let host_key = ssh::generate_host_key();
    let initrd = dir.join(format!("{}.initrd", spec.name));
    node_initrd(
        &spec.image.initramfs,
        &initrd,
        &host_key.dropbear,
        &spec.authorized_key,
    )?;
    let tap = tap_name(&paths.name, spec.index);
    let port = free_port()?;
    let mac = format!("52:54:00:5c:00:{:02x}", spec.index.min(255));
    let machine = MachineArgs::new(spec.image.machine)?;
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet {BOOT_TUNING} {} sk.hostname={} sk.addr={} sk.mgmt={MGMT_GUEST} {}",
        machine.cmdline, spec.name, spec.addr, spec.image.append
    );
    // Images whose init cannot read the appended archive (NixOS switches root and drops the
    // initramfs) read the same two files from QEMU's firmware config instead.
    let hk_file = dir.join(format!("{}.host_key", spec.name));
    let ak_file = dir.join(format!("{}.authorized_keys", spec.name));
    let secret = |p: &Path, data: &[u8]| {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(p);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, data))
            .map_err(io(p.display().to_string()))
    };
    secret(&hk_file, &host_key.openssh_private)?;
    secret(&ak_file, spec.authorized_key.as_bytes())?;
    let console = paths.log_file(&format!("{}.console", spec.name));
    let cpu = if spec.accel == "kvm" { "host" } else { TCG_CPU };
    let mut cmd = headless_guest(&spec.image.vmlinux, &initrd)?;
    cmd.args(["-name", &format!("sk-{}-{}", paths.name, spec.name)])
        .args(["-M", machine.name])
        .args([
            "-accel", spec.accel, "-cpu", cpu, "-smp", "1", "-m", GUEST_MEM,
        ])
        .args(["-append", &cmdline])
        .args([
            "-chardev",
            &format!("file,id=con,path={}", console.display()),
            "-serial",
            "chardev:con",
        ])
        .args(["-netdev", "tap,id=u,fd=3"])
        .args([
            "-device",
            &format!("{},netdev=u,mac={mac}", machine.device("net", 3)),
        ])
        .args([
            "-netdev",
            &format!("user,id=m,restrict=on,net={MGMT_NET},hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args(["-device", &format!("{},netdev=m", machine.device("net", 4))])
        .args(volume_args(spec.image, &machine))
        .arg("-fw_cfg")
        .arg(format!(
            "name=opt/swarmkit/host_key,file={}",
            hk_file.display()
        ))
        .arg("-fw_cfg")
        .arg(format!(
            "name=opt/swarmkit/authorized_keys,file={}",
            ak_file.display()
        ));
    let launch = Launch {
        argv: std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        tap,
    };
    let pid = launch
        .spawn(paths, &spec.name, spec.underlay, spec.bridge)
        .await?;
    let node = VmNode {
        name: spec.name.clone(),
        addr: spec.addr,
        ssh: format!("127.0.0.1:{port}"),
        user: "root".into(),
        host_key: ssh::public_openssh(&host_key.public),
        key_file: client_key_file(paths),
        pid: Some(pid),
        lb: spec.lb,
        mesh: Some(netcore::ingress::MeshLayout::Node),
        // A foreign image (SWARMKIT_VM_IMAGE) gets this build uploaded.
        binary: spec
            .image
            .volume
            .is_some()
            .then(|| super::host::GUEST_BINARY.to_string()),
        launch: Some(launch),
    };
    save_node(paths, &node).map_err(io("saving the node's SSH details"))?;
    Ok(node)
}

/// The image's shared volume as a read-only virtio disk (/dev/vda in the guest); read-only
/// drives take shared locks, so every guest of every cluster can open the same file.
fn volume_args(image: &Image, machine: &MachineArgs) -> Vec<String> {
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
struct MachineArgs {
    name: &'static str,
    mmio: bool,
    cmdline: String,
}

impl MachineArgs {
    fn new(machine: Machine) -> Result<Self> {
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
    fn device(&self, kind: &str, slot: u8) -> String {
        if self.mmio {
            format!("virtio-{kind}-device")
        } else {
            format!("virtio-{kind}-pci,addr={slot:#x}")
        }
    }
}

/// The host's TSC rate in kHz, measured once per host boot (kept in /run).
fn host_tsc_khz() -> Result<u64> {
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

/// Progress the `__vmhost` daemon records per node: "ssh" once logged in, "agent" once the
/// agent was started. `cluster up` shows these instead of opening connections of its own.
pub fn session_state(paths: &ClusterPaths, node: &str) -> Option<String> {
    std::fs::read_to_string(vm_dir(paths).join(format!("{node}.session"))).ok()
}

pub fn set_session_state(paths: &ClusterPaths, node: &str, state: &str) {
    let _ = std::fs::write(vm_dir(paths).join(format!("{node}.session")), state);
}

/// Waits until the daemon reports the node's SSH session up; fails early when QEMU died.
pub async fn wait_ssh(paths: &ClusterPaths, node: &VmNode, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if session_state(paths, &node.name).is_some() {
            return Ok(());
        }
        if let Some(pid) = node.pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(QemuError::Died {
                node: node.name.clone(),
                log: paths.log_file(&format!("{}.qemu", node.name)),
            });
        }
        if start.elapsed() > deadline {
            return Err(QemuError::SshTimeout {
                node: node.name.clone(),
                after: deadline,
                console: paths.log_file(&format!("{}.console", node.name)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the guest's console says it is ready for SSH (see [`console_ready`]); fails
/// at once when QEMU died, and after `deadline` otherwise.
pub async fn wait_console(paths: &ClusterPaths, node: &VmNode, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    while !console_ready(paths, node) {
        if let Some(pid) = node.pid
            && crate::procs::dead(pid as i32)
        {
            return Err(QemuError::Died {
                node: node.name.clone(),
                log: paths.log_file(&format!("{}.qemu", node.name)),
            });
        }
        if start.elapsed() > deadline {
            return Err(QemuError::SshTimeout {
                node: node.name.clone(),
                after: deadline,
                console: paths.log_file(&format!("{}.console", node.name)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether the guest's init said it is about to start its SSH server. Until then, connecting
/// is worse than waiting: QEMU's user-mode NIC accepts the connection, loses its SYN to a
/// guest whose network is not up yet, and retries it only seconds later. Machines that are
/// not our guests (the ssh backend's hosts) have no console and count as ready.
pub fn console_ready(paths: &ClusterPaths, node: &VmNode) -> bool {
    if node.pid.is_none() {
        return true;
    }
    std::fs::read(paths.log_file(&format!("{}.console", node.name)))
        .is_ok_and(|bytes| bytes.windows(13).any(|w| w == b"ready for ssh"))
}

/// Whether an SSH server greets on `addr`. The timeout is generous: on a loaded host an
/// emulated guest takes seconds to fork a server process, and giving up early only piles up
/// more connections for it to serve.
pub fn banner(addr: &str) -> bool {
    let Ok(sa) = addr.parse() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tsc_tests {
    #[test]
    fn the_tsc_rate_is_plausible_and_repeatable() {
        let (a, b) = (super::measure_tsc_khz(), super::measure_tsc_khz());
        assert!((100_000..10_000_000).contains(&a), "{a} kHz");
        assert!(a.abs_diff(b) * 100 < a, "{a} kHz then {b} kHz");
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;

    fn node(pid: u32) -> VmNode {
        VmNode {
            name: "node1".into(),
            addr: "192.168.0.11/24".parse().unwrap(),
            ssh: "127.0.0.1:1".into(),
            user: "root".into(),
            host_key: String::new(),
            key_file: PathBuf::new(),
            pid: Some(pid),
            lb: None,
            mesh: None,
            binary: None,
            launch: None,
        }
    }

    #[tokio::test]
    async fn a_dead_guest_is_noticed_while_waiting_for_its_console() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let paths = ClusterPaths::new("sktest-console-dead");
        let r = wait_console(&paths, &node(pid), Duration::from_secs(60)).await;
        assert!(matches!(r, Err(QemuError::Died { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn the_console_wait_has_a_deadline() {
        let paths = ClusterPaths::new("sktest-console-silent");
        let r = wait_console(
            &paths,
            &node(std::process::id()),
            Duration::from_millis(100),
        )
        .await;
        assert!(matches!(r, Err(QemuError::SshTimeout { .. })), "{r:?}");
    }
}
