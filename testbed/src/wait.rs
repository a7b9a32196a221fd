//! The crate's one wait loop: polling a condition with a short back-off until it holds, a
//! deadline passes, or the condition gives up (a guest's QEMU died). Every wait of the
//! testbed (a manager answering, a node ready, a guest's console or SSH server) is built on
//! [`poll_until`], most through [`wait_until`].

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// What [`wait_until`] waited for in vain, and where to look for why.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}; see {see}")]
pub struct Timeout {
    pub what: String,
    pub after: Duration,
    pub see: String,
}

/// Polls `check` until it holds or `deadline` has passed; the error names what was awaited
/// and `see`, where to look for why.
pub async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    see: &Path,
    mut check: F,
) -> Result<(), Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = poll_until(deadline, || {
        let checked = check();
        async move { Ok::<_, Infallible>(checked.await) }
    })
    .await;
    match held {
        Ok(true) => Ok(()),
        Ok(false) => Err(Timeout {
            what: what.to_string(),
            after: deadline,
            see: see.display().to_string(),
        }),
        Err(never) => match never {},
    }
}

/// The loop itself: polls `check` with a back-off from 2 ms to 50 ms. `Ok(true)` once the
/// check held, `Ok(false)` when `deadline` passed first, and the check's own error as soon as
/// it gives one (waiting on is pointless: what was awaited can no longer happen).
pub async fn poll_until<E, F, Fut>(deadline: Duration, mut check: F) -> Result<bool, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    while !check().await? {
        if start.elapsed() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_its_check_holds_gives_up_or_runs_out_of_time() {
        let mut n = 0;
        let r = poll_until(Duration::from_secs(5), || {
            n += 1;
            let held = n == 3;
            async move { Ok::<_, ()>(held) }
        })
        .await;
        assert_eq!((r, n), (Ok(true), 3));
        let r = poll_until(Duration::from_secs(5), || async { Err::<bool, _>("gone") }).await;
        assert_eq!(r, Err("gone"));
        let r = wait_until(
            "never",
            Duration::from_millis(20),
            Path::new("/x"),
            || async { false },
        )
        .await;
        let e = r.expect_err("a deadline");
        assert_eq!(
            e.to_string(),
            "timed out after 20ms waiting for never; see /x"
        );
    }
}
