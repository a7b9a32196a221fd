//! One node's guest: its private initrd (host key, authorized key), its tap on the cluster's
//! bridge, its SSH port on the host's loopback, its QEMU command line, kept in its record so
//! that `node start` boots the same guest again after `node kill`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use netcore::link::Links;
use netcore::netns::NetNs;

use super::cmdline::{BOOT_TUNING, GUEST_MEM, MachineArgs, TCG_CPU, headless_guest, volume_args};
use super::{QemuError, Result, io};
use crate::ssh;
use crate::vm::cpio::CpioWriter;
use crate::vm::image::Image;
use crate::vm::node::{Launch, VmNode, client_key_file, save_node, vm_dir};
use cluster::paths::{ClusterPaths, OWNER_ENV};

/// The user-mode NIC's private subnet, chosen away from the overlay pools (10.0.0.0/8) and
/// the underlay (192.168.0.0/24).
const MGMT_NET: &str = "172.31.254.0/24";
const MGMT_GUEST: &str = "172.31.254.15/24";

/// Starts `launch`: opens its tap in `underlay`, plugs it into `bridge` and starts QEMU;
/// returns its pid. The tap vanishes when QEMU exits.
pub async fn spawn(
    launch: &Launch,
    paths: &ClusterPaths,
    node: &str,
    underlay: &NetNs,
    bridge: &str,
) -> Result<u32> {
    let tap_fd = open_tap(underlay, &launch.tap)?;
    let links = Links::new(underlay)?;
    let ti = links.require(&launch.tap).await?;
    let bi = links.require(bridge).await?;
    links.set_master(ti, bi).await?;
    links.set_up(ti).await?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log_file(&format!("{node}.qemu")))
        .map_err(io("qemu log"))?;
    let mut cmd = Command::new(&launch.argv[0]);
    cmd.args(&launch.argv[1..])
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

/// How big a guest's state disk is (sparse: it takes what its files take).
const STATE_DISK_SIZE: &str = "256M";

/// The guest's disk for the cluster's state directory (its manager's store and Raft log, its
/// credentials): made empty (ext4) on its first boot and kept, as a machine's disk is, when
/// the guest is killed and started again; it goes with the cluster's state.
fn state_disk(paths: &ClusterPaths, node: &str) -> Result<PathBuf> {
    let dir = paths.state_dir().join("machines");
    cluster::paths::create_private_dir(&dir).map_err(io(dir.display().to_string()))?;
    let disk = dir.join(format!("{node}.img"));
    if disk.exists() {
        return Ok(disk);
    }
    let tmp = disk.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "sk-state"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&tmp)
        .arg(STATE_DISK_SIZE)
        .output()
        .map_err(io("running mke2fs (e2fsprogs) for a guest's state disk"))?;
    if !out.status.success() {
        return Err(QemuError::Io {
            what: format!("making {}", tmp.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    std::fs::rename(&tmp, &disk).map_err(io(disk.display().to_string()))?;
    Ok(disk)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("picking a free port"))?;
    Ok(l.local_addr().map_err(io("picking a free port"))?.port())
}

/// What [`boot`] needs to start one node's guest.
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
    let state_disk = state_disk(paths, &spec.name)?;
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
        .args([
            "-drive",
            &format!(
                "file={},if=none,id=state,format=raw,cache=writeback",
                state_disk.display()
            ),
            "-device",
            &format!(
                "{},drive=state,serial={}",
                machine.device("blk", 6),
                crate::vm::host::STATE_DISK_SERIAL
            ),
        ])
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
    let pid = spawn(&launch, paths, &spec.name, spec.underlay, spec.bridge).await?;
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
            .then(|| crate::vm::image::GUEST_BINARY.to_string()),
        launch: Some(launch),
    };
    save_node(paths, &node).map_err(io("saving the node's SSH details"))?;
    Ok(node)
}
