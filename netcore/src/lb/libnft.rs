//! nft without a process: libnftables (the library the nft binary is a thin shell around),
//! opened with dlopen and driven with the same JSON and text the binary reads.
//!
//! Spawning nft costs ~15 ms on the host and 100-500 ms in a TCG guest, and an agent's plan
//! apply is mostly that; a batch through a warm context costs well under a millisecond. A
//! context's netlink socket belongs to the namespace it was opened in, so each `Context` is
//! opened inside its namespace and then serves it from any thread. Where the library is
//! missing (an ssh host with only the binary, say), `open_in` says so and callers spawn nft.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use crate::netns::NetNs;

/// Where to load libnftables from when the dynamic loader's search path does not have it
/// (NixOS, say); the soname otherwise.
pub const ENV_LIBRARY: &str = "SWARMKIT_LIBNFTABLES";

/// `NFT_CTX_OUTPUT_JSON`: also makes `nft_run_cmd_from_buffer` try JSON before nft syntax.
const OUTPUT_JSON: c_uint = 1 << 4;

struct Lib {
    ctx_new: unsafe extern "C" fn(c_uint) -> *mut c_void,
    ctx_free: unsafe extern "C" fn(*mut c_void),
    output_set_flags: unsafe extern "C" fn(*mut c_void, c_uint),
    buffer_output: unsafe extern "C" fn(*mut c_void) -> c_int,
    buffer_error: unsafe extern "C" fn(*mut c_void) -> c_int,
    error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    run_cmd: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    _lib: libloading::Library,
}

fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: libnftables runs no initialisers with preconditions; the symbols are its
        // stable C API (unchanged since 0.9) and typed as in <nftables/libnftables.h>.
        unsafe {
            let path = std::env::var_os(ENV_LIBRARY).unwrap_or_else(|| "libnftables.so.1".into());
            let lib = libloading::Library::new(path).ok()?;
            Some(Lib {
                ctx_new: *lib.get(b"nft_ctx_new\0").ok()?,
                ctx_free: *lib.get(b"nft_ctx_free\0").ok()?,
                output_set_flags: *lib.get(b"nft_ctx_output_set_flags\0").ok()?,
                buffer_output: *lib.get(b"nft_ctx_buffer_output\0").ok()?,
                buffer_error: *lib.get(b"nft_ctx_buffer_error\0").ok()?,
                error_buffer: *lib.get(b"nft_ctx_get_error_buffer\0").ok()?,
                run_cmd: *lib.get(b"nft_run_cmd_from_buffer\0").ok()?,
                _lib: lib,
            })
        }
    })
    .as_ref()
}

/// libnftables keeps some state process-wide (symbol tables, the JSON parser's), so calls are
/// serialised; each takes well under a millisecond.
static CALLS: Mutex<()> = Mutex::new(());

/// A namespace's context, opened on first use: not tried yet, unavailable, or open.
#[derive(Default)]
pub struct Slot(Option<Option<Context>>);

impl Slot {
    pub fn get_or_open(&mut self, ns: &NetNs) -> Option<&mut Context> {
        self.0.get_or_insert_with(|| Context::open_in(ns)).as_mut()
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            None => "not opened",
            Some(None) => "unavailable",
            Some(Some(_)) => "open",
        })
    }
}

/// A libnftables context bound to one network namespace.
pub struct Context {
    lib: &'static Lib,
    ctx: NonNull<c_void>,
}

// SAFETY: the context is only touched under `CALLS`, and its socket does not care which thread
// uses it.
unsafe impl Send for Context {}

/// libnftables waits on its netlink socket with select(2), and glibc aborts the whole process
/// when select is handed a descriptor >= FD_SETSIZE. An agent running a few hundred tasks holds
/// over a thousand descriptors (namespaces, DNS sockets, pipes), so a context must not open its
/// socket on whatever number is free: at first use, the free numbers below `LOW_FDS` are set
/// aside (on /dev/null), and each context opens its socket on one of them. With none left,
/// `open_in` declines and callers spawn nft, which starts with a fresh descriptor table.
const LOW_FDS: c_int = 1000;

enum Reserve {
    /// The descriptor limit is below FD_SETSIZE: every descriptor is low.
    NotNeeded,
    /// Reserved low descriptors, highest first (`pop` gives the lowest).
    Pool(Vec<c_int>),
}

/// Guarded by `CALLS` (taken before it).
static RESERVE: Mutex<Option<Reserve>> = Mutex::new(None);

fn open_dev_null() -> c_int {
    // SAFETY: plain open(2) of a constant path.
    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
}

/// Holds one more low descriptor if the lowest free one is low.
fn reserve_one(pool: &mut Vec<c_int>) -> bool {
    let fd = open_dev_null();
    if fd < 0 {
        return false;
    }
    if fd >= LOW_FDS {
        // SAFETY: ours, just opened.
        unsafe { libc::close(fd) };
        return false;
    }
    pool.push(fd);
    pool.sort_unstable_by(|a, b| b.cmp(a));
    true
}

fn reserve() -> std::sync::MutexGuard<'static, Option<Reserve>> {
    let mut r = RESERVE.lock().unwrap_or_else(|e| e.into_inner());
    if r.is_none() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: fills a local struct.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } == 0 {
            lim.rlim_cur
        } else {
            u64::MAX
        };
        *r = Some(if soft <= libc::FD_SETSIZE as u64 {
            Reserve::NotNeeded
        } else {
            let mut pool = Vec::new();
            while reserve_one(&mut pool) {}
            Reserve::Pool(pool)
        });
    }
    r
}

/// Whether `fd` is a netfilter netlink socket (only libnftables opens those, under `CALLS`).
fn is_nfnetlink(fd: c_int) -> bool {
    let opt = |name: c_int| {
        let mut v: c_int = -1;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: reads one int option into a local of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    opt(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
        && opt(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
}

impl Context {
    /// A context whose netlink socket lives in `ns`; None if libnftables is not installed, no
    /// low descriptor is left for its socket, or the context cannot be made there.
    pub fn open_in(ns: &NetNs) -> Option<Context> {
        let lib = lib()?;
        let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        let mut reserve = reserve();
        let low = match reserve.as_mut() {
            Some(Reserve::Pool(pool)) => Some(pool.pop()?),
            _ => None,
        };
        let ptr = ns
            .run(|| {
                if let Some(fd) = low {
                    // The lowest free number, so the socket opened next takes it.
                    // SAFETY: a /dev/null descriptor this module reserved.
                    unsafe { libc::close(fd) };
                }
                // SAFETY: plain constructor; flags 0 = NFT_CTX_DEFAULT (opens the socket).
                let ctx = unsafe { (lib.ctx_new)(0) };
                ctx as usize
            })
            .ok();
        let ctx = ptr.and_then(|p| NonNull::new(p as *mut c_void));
        if let (Some(fd), Some(Reserve::Pool(pool))) = (low, reserve.as_mut())
            && !ctx.is_some_and(|_| is_nfnetlink(fd))
        {
            // Another thread took the number first: the socket is elsewhere, maybe high.
            if let Some(ctx) = ctx {
                // SAFETY: a live context nobody else has seen.
                unsafe { (lib.ctx_free)(ctx.as_ptr()) };
            }
            reserve_one(pool);
            return None;
        }
        let ctx = ctx?;
        // SAFETY: `ctx` is a live context from nft_ctx_new.
        unsafe {
            (lib.output_set_flags)(ctx.as_ptr(), OUTPUT_JSON);
            // Errors come back as text instead of going to our stderr.
            (lib.buffer_output)(ctx.as_ptr());
            (lib.buffer_error)(ctx.as_ptr());
        }
        Some(Context { lib, ctx })
    }

    /// Runs a JSON batch or nft-syntax commands as one transaction; on failure, nft's own
    /// error text.
    pub fn run(&mut self, commands: &str) -> Result<(), String> {
        let commands =
            CString::new(commands).map_err(|_| "the commands contain a NUL byte".to_string())?;
        let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: live context, NUL-terminated input that outlives the call; the error buffer
        // is owned by the context and read before the next call on it.
        unsafe {
            let rc = (self.lib.run_cmd)(self.ctx.as_ptr(), commands.as_ptr());
            let err = (self.lib.error_buffer)(self.ctx.as_ptr());
            if rc == 0 {
                return Ok(());
            }
            let text = if err.is_null() {
                String::new()
            } else {
                CStr::from_ptr(err).to_string_lossy().trim().to_string()
            };
            Err(if text.is_empty() {
                format!("libnftables returned {rc}")
            } else {
                text
            })
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: freed once; closes the context's socket, releasing the namespace.
        unsafe { (self.lib.ctx_free)(self.ctx.as_ptr()) }
        // Its low number is free again: hold it for the next context.
        if let Some(Reserve::Pool(pool)) = reserve().as_mut() {
            reserve_one(pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn runs_json_and_text_in_the_namespace_and_reports_errors() {
        if !is_root() || lib().is_none() {
            eprintln!("skipped: needs root and libnftables");
            return;
        }
        let name = format!("sk-libnft-{}", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        let mut ctx = Context::open_in(&ns).unwrap();
        ctx.run(r#"{"nftables":[{"add":{"table":{"family":"ip","name":"t"}}}]}"#)
            .unwrap();
        ctx.run("add chain ip t c").unwrap();
        let listed = crate::lb::nftbatch::run_nft(&ns, &["list", "table", "ip", "t"], None);
        let host = crate::lb::nftbatch::run_nft(
            &NetNs::of_pid(std::process::id()).unwrap(),
            &["list", "tables"],
            None,
        );
        let err = ctx.run("add chain ip no_such_table c").unwrap_err();
        drop(ctx);
        NetNs::delete(&name).unwrap();
        assert!(listed.unwrap().contains("chain c"));
        assert!(!host.unwrap().contains("table ip t\n"), "nothing in ours");
        assert!(err.contains("No such file or directory"), "{err}");
    }

    #[test]
    fn contexts_work_with_more_descriptors_open_than_select_takes() {
        use std::os::fd::AsRawFd;
        if !is_root() || lib().is_none() {
            eprintln!("skipped: needs root and libnftables");
            return;
        }
        let name = format!("sk-libnft-fds-{}", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        // The first context sets the low descriptors aside, as in an agent starting up.
        drop(Context::open_in(&ns).unwrap());
        let hog: Vec<std::fs::File> = (0..1100)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let highest = hog.last().unwrap().as_raw_fd();
        // glibc aborts the whole test binary if the socket's number reaches select(2).
        let result = Context::open_in(&ns).map(|mut ctx| {
            ctx.run(r#"{"nftables":[{"add":{"table":{"family":"ip","name":"t"}}}]}"#)
        });
        drop(hog);
        NetNs::delete(&name).unwrap();
        assert!(highest >= libc::FD_SETSIZE as i32, "{highest}");
        assert_eq!(result, Some(Ok(())));
    }
}
