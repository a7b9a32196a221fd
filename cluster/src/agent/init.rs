//! `swarmkit __init -- COMMAND...`: the minimal init a task runs under with `--init`, as
//! docker runs tini. It starts the task's command, forwards every signal it receives to it
//! (the agent's SIGTERM included), reaps whatever exits under it (orphans of the task come to
//! it, as to a PID 1), and exits with the command's status (128 + the signal that killed it).
//! Runs before any other thread exists: it forks.

use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Runs the init over `argv`; returns its exit status.
pub fn run(argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("swarmkit __init: no command to run: give one after --");
        return 127;
    };
    // Orphans anywhere below become this process's children, so none is left a zombie.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "swarmkit __init: becoming the task's subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    // Every signal waits for `sigwait` below; the child starts with none blocked.
    let all = SigSet::all();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None) {
        eprintln!("swarmkit __init: blocking signals: {e}");
        return 126;
    }
    let mut command = std::process::Command::new(program);
    command.args(args);
    // SAFETY: one sigprocmask between fork and exec, on a set made before the fork.
    unsafe {
        let none = SigSet::empty();
        command.pre_exec(move || {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&none), None).map_err(std::io::Error::from)
        });
    }
    let child = match command.spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            eprintln!("swarmkit __init: starting {program}: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(child) {
                    return status;
                }
            }
            Ok(signal) => {
                let _ = kill(child, signal);
            }
            Err(e) => {
                eprintln!("swarmkit __init: waiting for signals: {e}");
                return 126;
            }
        }
    }
}

/// Reaps every child that has exited; the command's status once it is among them.
fn reap(command: Pid) -> Option<i32> {
    let mut status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => status = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                status = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return status,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("swarmkit __init: reaping: {e}");
                return status;
            }
        }
    }
}
