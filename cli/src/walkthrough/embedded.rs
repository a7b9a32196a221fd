//! Walkthroughs and snapshots built into the binary (see cli/build.rs), the last fallback when
//! neither `--plans`/`--snapshots` nor `./testplans`/`./snapshots` exist.

include!(concat!(env!("OUT_DIR"), "/walkthrough_embedded.rs"));

pub fn plan(name: &str) -> Option<&'static str> {
    PLANS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn snapshot(name: &str) -> Option<&'static str> {
    SNAPSHOTS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
