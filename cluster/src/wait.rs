//! Waiting for something that can only be polled: a check tried until it holds, until it
//! fails for good, or until a deadline passes, with a pause between tries that may grow. Every
//! poll-until-deadline loop of the control plane is this one; the testbed's can be too.

use std::future::Future;
use std::time::Duration;

/// One try's outcome.
#[derive(Debug)]
pub enum Check<T, E> {
    /// What was awaited holds.
    Ready(T),
    /// Not yet; why, which a timeout reports when the last try said so.
    NotYet(E),
    /// It never will (say, the process that was to answer died): stop trying.
    Failed(E),
}

impl From<bool> for Check<(), ()> {
    fn from(holds: bool) -> Self {
        if holds {
            Check::Ready(())
        } else {
            Check::NotYet(())
        }
    }
}

/// The pause between tries: `first`, doubled after each try up to `max`. A short first pause
/// catches what is nearly ready; the cap bounds how late the last try can come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    pub first: Duration,
    pub max: Duration,
}

impl Pace {
    pub const fn every(pause: Duration) -> Pace {
        Pace {
            first: pause,
            max: pause,
        }
    }

    pub const fn doubling(first: Duration, max: Duration) -> Pace {
        Pace { first, max }
    }
}

/// Why a wait ended without its value.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<E> {
    /// The deadline passed; `last` is what the last try said.
    TimedOut { after: Duration, last: E },
    /// A try said it never will.
    Failed(E),
}

impl<E> Waited<E> {
    /// What the last try said, however the wait ended.
    pub fn into_reason(self) -> E {
        match self {
            Waited::TimedOut { last, .. } => last,
            Waited::Failed(e) => e,
        }
    }
}

/// Tries `check` until it is ready (its value), or it fails, or `deadline` (None: none) has
/// passed since the first try; tries at least once, and again after each pause of `pace`.
pub async fn until<T, E, F, Fut>(
    deadline: Option<Duration>,
    pace: Pace,
    mut check: F,
) -> Result<T, Waited<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Check<T, E>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = pace.first;
    loop {
        match check().await {
            Check::Ready(v) => return Ok(v),
            Check::Failed(e) => return Err(Waited::Failed(e)),
            Check::NotYet(last) => {
                if let Some(after) = deadline
                    && start.elapsed() > after
                {
                    return Err(Waited::TimedOut { after, last });
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(pace.max);
    }
}

/// Sleeps until `at`, or for ever without one: the timer arm of a loop that wakes for events
/// and, only sometimes, at a time.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn it_tries_until_ready_pausing_longer_each_time() {
        let tries = Cell::new(0);
        let start = tokio::time::Instant::now();
        let got = until(
            Some(Duration::from_secs(10)),
            Pace::doubling(Duration::from_millis(2), Duration::from_millis(8)),
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move {
                    if n == 5 {
                        Check::Ready(n)
                    } else {
                        Check::<_, ()>::NotYet(())
                    }
                }
            },
        )
        .await;
        assert_eq!(got, Ok(5));
        // 2 + 4 + 8 + 8 ms of pauses.
        assert!(start.elapsed() >= Duration::from_millis(22));
    }

    #[tokio::test]
    async fn it_gives_up_after_the_deadline_or_a_failure() {
        let timed_out = until(
            Some(Duration::from_millis(100)),
            Pace::every(Duration::from_millis(30)),
            || async { Check::<(), _>::NotYet("still down") },
        )
        .await;
        assert_eq!(
            timed_out,
            Err(Waited::TimedOut {
                after: Duration::from_millis(100),
                last: "still down"
            })
        );
        let failed = until(None, Pace::every(Duration::from_millis(1)), || async {
            Check::<(), _>::Failed("died")
        })
        .await;
        assert_eq!(failed.map_err(Waited::into_reason), Err("died"));
        let ready: Result<(), Waited<()>> =
            until(None, Pace::every(Duration::from_millis(1)), || async {
                true.into()
            })
            .await;
        assert_eq!(ready, Ok(()));
    }
}
