//! Data-path keyrings of encrypted networks: keys come from the OS CSPRNG, live only in the
//! manager's store (the store file is 0600 under a 0700 directory) and in the plans of the
//! nodes that carry the network, and are never printed: `netcore::xfrm::Key` redacts itself.
//!
//! Rotation is hitless, as Swarm's: a new key is first handed out for receiving only; once
//! every ready node has applied the plan holding it (the lowest ack reached the store version
//! that added it), it becomes the key nodes send with. The ring keeps the newest three keys, so
//! packets in flight under an older key still decrypt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use netcore::xfrm::{KEY_LEN, Key};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

/// The records' time type (`model::Time`), named here so that keys, which the records hold,
/// depend on nothing of the crate's.
type Time = DateTime<Utc>;

pub const DEFAULT_ROTATION: Duration = Duration::from_secs(12 * 3600);
pub const KEYRING_SIZE: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Keyring {
    /// Oldest first.
    pub keys: Vec<Key>,
    /// Tag of the key nodes send with.
    pub primary: u32,
    /// When the newest key was made.
    pub rotated: Time,
    /// Store version that handed out the newest key for receiving only; it becomes primary
    /// once every ready node has applied that version.
    #[serde(default)]
    pub pending: Option<u64>,
    /// Rotations begun since the keyring was made.
    #[serde(default)]
    pub generation: u64,
}

fn new_key(taken: &[Key]) -> Result<Key, RandomError> {
    let mut rng = rand::rngs::OsRng;
    let mut material = [0u8; KEY_LEN];
    rng.try_fill_bytes(&mut material)
        .map_err(|e| RandomError(e.to_string()))?;
    loop {
        let tag = rng.try_next_u32().map_err(|e| RandomError(e.to_string()))?;
        if tag != 0 && !taken.iter().any(|k| k.tag == tag) {
            return Ok(Key { tag, material });
        }
    }
}

impl Keyring {
    pub fn new(now: Time) -> Result<Keyring, RandomError> {
        let key = new_key(&[])?;
        Ok(Keyring {
            primary: key.tag,
            keys: vec![key],
            rotated: now,
            pending: None,
            generation: 0,
        })
    }

    pub fn rotating(&self) -> bool {
        self.pending.is_some()
    }

    /// Adds a key for receiving only, at store version `version`; drops the oldest beyond
    /// the ring's size (never the primary: it is the newest but one).
    pub fn begin_rotation(&mut self, version: u64, now: Time) -> Result<(), RandomError> {
        let key = new_key(&self.keys)?;
        self.keys.push(key);
        while self.keys.len() > KEYRING_SIZE {
            let primary = self.primary;
            if let Some(i) = self.keys.iter().position(|k| k.tag != primary) {
                self.keys.remove(i);
            }
        }
        self.rotated = now;
        self.pending = Some(version);
        self.generation += 1;
        Ok(())
    }

    /// Makes the newest key the one to send with once every ready node can receive with it.
    pub fn promote_if_ready(&mut self, min_ack: u64) -> bool {
        match (self.pending, self.keys.last()) {
            (Some(v), Some(newest)) if min_ack >= v => {
                self.primary = newest.tag;
                self.pending = None;
                true
            }
            _ => false,
        }
    }

    /// Whether the schedule asks for a new key now.
    pub fn due(&self, now: Time, every: Duration) -> bool {
        !self.rotating() && (now - self.rotated).to_std().is_ok_and(|age| age >= every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_sends_with_a_new_key_only_after_every_node_can_receive_it() {
        let t0 = chrono::Utc::now();
        let mut ring = Keyring::new(t0).unwrap();
        let first = ring.primary;
        assert_eq!(ring.keys.len(), 1);
        assert_ne!(ring.keys[0].material, [0; KEY_LEN]);

        ring.begin_rotation(10, t0).unwrap();
        assert_eq!(ring.keys.len(), 2);
        assert_eq!(ring.primary, first, "the new key is for receiving only");
        assert!(
            !ring.promote_if_ready(9),
            "a node has not applied version 10"
        );
        assert_eq!(ring.primary, first);
        assert!(ring.promote_if_ready(10));
        assert_eq!(ring.primary, ring.keys[1].tag);
        assert!(!ring.rotating());
    }

    #[test]
    fn the_ring_keeps_three_keys_and_never_drops_the_primary() {
        let t0 = chrono::Utc::now();
        let mut ring = Keyring::new(t0).unwrap();
        for v in 1..=5 {
            ring.begin_rotation(v, t0).unwrap();
            assert!(ring.keys.len() <= KEYRING_SIZE);
            assert!(ring.keys.iter().any(|k| k.tag == ring.primary));
            ring.promote_if_ready(v);
        }
        let tags: std::collections::BTreeSet<u32> = ring.keys.iter().map(|k| k.tag).collect();
        assert_eq!(tags.len(), ring.keys.len(), "tags are distinct");
    }

    #[test]
    fn the_schedule_waits_for_its_interval_and_for_a_running_rotation() {
        let t0 = chrono::Utc::now();
        let mut ring = Keyring::new(t0).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(!ring.due(t0 + chrono::Duration::minutes(59), hour));
        assert!(ring.due(t0 + chrono::Duration::minutes(61), hour));
        ring.begin_rotation(1, t0).unwrap();
        assert!(!ring.due(t0 + chrono::Duration::hours(5), hour));
    }

    #[test]
    fn a_keyring_never_shows_its_keys_in_debug_output() {
        let ring = Keyring::new(chrono::Utc::now()).unwrap();
        let hex = hex::encode(ring.keys[0].material);
        let shown = format!("{ring:?}");
        assert!(!shown.contains(&hex), "{shown}");
    }
}
