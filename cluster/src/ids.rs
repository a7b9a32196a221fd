//! Object IDs the way Swarm makes them: 128 random bits in base36, padded to 25 characters.

use rand::Rng;

pub const ID_LEN: usize = 25;

pub fn new_id() -> String {
    let mut n: u128 = rand::rng().random();
    let mut digits = [b'0'; ID_LEN];
    for d in digits.iter_mut().rev() {
        let r = (n % 36) as u8;
        *d = if r < 10 { b'0' + r } else { b'a' + r - 10 };
        n /= 36;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// 64 hex characters, the shape of a local (non-swarm) network ID.
pub fn new_hex_id() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        assert_ne!(a, b);
        assert_eq!(new_hex_id().len(), 64);
    }
}
