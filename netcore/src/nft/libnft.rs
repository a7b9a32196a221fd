//! nft without a process: libnftables (the library the nft binary is a thin shell around),
//! opened with dlopen and driven with the same JSON and text the binary reads.
//!
//! Spawning nft costs ~15 ms on the host and 100-500 ms in a TCG guest, and an agent's plan
//! apply is mostly that; a batch through a warm context costs well under a millisecond. A
//! context's netlink socket belongs to the namespace it was opened in, so each `Context` is
//! opened inside its namespace and then serves it from any thread. Where the library is
//! missing (an ssh host with only the binary, say), `open_in` says so and callers spawn nft.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Whether libnftables could be loaded.
pub fn available() -> bool {
    lib().is_some()
}

/// libnftables keeps some state process-wide (symbol tables, the JSON parser's), so calls are
/// serialised; each takes well under a millisecond.
static CALLS: Mutex<()> = Mutex::new(());

/// libnftables waits on its netlink socket with select(2), and glibc aborts the whole process
/// when select is handed a descriptor >= FD_SETSIZE (1024). The socket is opened by
/// `nft_ctx_new` on the lowest free descriptor, so a context is only opened where that is
/// well below the limit. An agent with a thousand tasks holds several thousand descriptors,
/// so it sets low ones aside at start ([`reserve_low_descriptors`]) and frees one just before
/// a context opens. Without one, callers spawn nft, which starts with a fresh descriptor
/// table but costs a fork of the whole agent and nft's own listing of the ruleset.
const LOW_FDS: RawFd = 1000;

/// Descriptors below `LOW_FDS` set aside for contexts' sockets (each holds /dev/null), and
/// how many the process asked for.
static RESERVED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());
static RESERVE_TARGET: AtomicUsize = AtomicUsize::new(0);

/// Sets aside up to `n` descriptors below FD_SETSIZE for the libnftables contexts this process
/// will open, wherever its descriptor count goes later. Call it early, while they are free.
pub fn reserve_low_descriptors(n: usize) {
    RESERVE_TARGET.store(n, Ordering::Relaxed);
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    while reserved.len() < n {
        match std::fs::File::open("/dev/null") {
            Ok(f) if f.as_raw_fd() < LOW_FDS => reserved.push(f.into()),
            _ => break,
        }
    }
}

/// Where the next context's socket will land: a free low descriptor, or a reserved one
/// freed for it. None when neither is left.
fn free_low_descriptor() -> Option<RawFd> {
    let probe = std::fs::File::open("/dev/null").ok()?;
    if probe.as_raw_fd() < LOW_FDS {
        return Some(probe.as_raw_fd());
    }
    let spare = RESERVED.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
    let fd = spare.as_raw_fd();
    drop(spare);
    Some(fd)
}

/// Whether `fd` is a netfilter netlink socket: how a context's socket is told apart from a
/// descriptor another thread opened on the freed number first.
fn is_netfilter_socket(fd: RawFd) -> bool {
    let int_opt = |opt| {
        let mut v: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for the call; a descriptor that is not a socket
        // (or was closed) fails with an error instead.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &raw mut len)
        };
        (rc == 0).then_some(v)
    };
    int_opt(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
        && int_opt(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
}

/// Sets a low descriptor aside again for a freed context's: its own number, or a lower one
/// freed meanwhile (any other descriptor closing below it).
fn give_back() {
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    if reserved.len() >= RESERVE_TARGET.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(f) = std::fs::File::open("/dev/null")
        && f.as_raw_fd() < LOW_FDS
    {
        reserved.push(f.into());
    }
}

/// A namespace's context, opened on first use: not tried yet, unavailable, or open.
#[derive(Default)]
pub struct Slot(Option<Option<Context>>);

impl Slot {
    pub fn get_or_open(&mut self, ns: &NetNs) -> Option<&mut Context> {
        // Without the library there is nothing to retry; without a low descriptor, a later
        // call may find one.
        if self.0.is_none() || matches!(self.0, Some(None)) && available() {
            self.0 = Some(Context::open_in(ns));
        }
        self.0.as_mut().and_then(Option::as_mut)
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

impl Context {
    /// A context whose netlink socket lives in `ns`; None if libnftables is not installed or
    /// the context cannot be made there.
    pub fn open_in(ns: &NetNs) -> Option<Context> {
        let lib = lib()?;
        let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may take the freed number first, leaving the socket where select
        // may not reach: that context is freed and the next number tried.
        let ctx = (0..4).find_map(|_| {
            let socket = free_low_descriptor()?;
            let ptr = ns
                .run(|| {
                    // SAFETY: plain constructor; flags 0 = NFT_CTX_DEFAULT (opens the socket).
                    let ctx = unsafe { (lib.ctx_new)(0) };
                    ctx as usize
                })
                .ok()?;
            let ctx = NonNull::new(ptr as *mut c_void)?;
            if is_netfilter_socket(socket) {
                return Some(ctx);
            }
            // SAFETY: a live context from nft_ctx_new, freed once.
            unsafe { (lib.ctx_free)(ctx.as_ptr()) };
            None
        })?;
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
        give_back();
    }
}
