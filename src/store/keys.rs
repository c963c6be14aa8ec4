//! Every sled key layout, in one place. Integers are fixed-width big-endian so
//! that byte order is numeric order.
//!
//! Tree `log` (alerts and their indexes; written only by the writer thread):
//!
//! | key | value |
//! |---|---|
//! | `a` seq:u64 | prost `AlertRecord` |
//! | `i` id:[u8;16] | seq:u64, received_at_us:u64 |
//! | `t` received_at_us:u64 seq:u64 | empty |
//! | `m` name | meta value (`next_seq`, `bytes`: u64) |
//!
//! Tree `feeds` (durable feed state): key `owner-urn 0x00 feed-name`, value
//! prost `StoredFeed`.

use crate::alert::{AlertId, Seq};

pub const ALERT: u8 = b'a';
pub const ID: u8 = b'i';
pub const TIME: u8 = b't';
pub const META_NEXT_SEQ: &[u8] = b"mnext_seq";
pub const META_BYTES: &[u8] = b"mbytes";

pub fn alert(seq: Seq) -> [u8; 9] {
    let mut k = [ALERT; 9];
    k[1..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

pub fn alert_seq(key: &[u8]) -> Option<Seq> {
    match key {
        [ALERT, rest @ ..] => Some(Seq(u64::from_be_bytes(rest.try_into().ok()?))),
        _ => None,
    }
}

pub fn id(id: &AlertId) -> [u8; 17] {
    let mut k = [ID; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

pub fn id_value(seq: Seq, received_us: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&seq.0.to_be_bytes());
    v[8..].copy_from_slice(&received_us.to_be_bytes());
    v
}

pub fn parse_id_value(v: &[u8]) -> Option<(Seq, u64)> {
    let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let us = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((Seq(seq), us))
}

pub fn time(received_us: u64, seq: Seq) -> [u8; 17] {
    let mut k = [TIME; 17];
    k[1..9].copy_from_slice(&received_us.to_be_bytes());
    k[9..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

pub fn time_seq(key: &[u8]) -> Option<Seq> {
    match key {
        [TIME, rest @ ..] if rest.len() == 16 => {
            Some(Seq(u64::from_be_bytes(rest[8..].try_into().ok()?)))
        }
        _ => None,
    }
}

pub fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub fn feed(owner: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + name.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_keys_sort_numerically_and_round_trip() {
        let seqs = [0, 1, 255, 256, 65_536, u64::MAX - 1];
        let keys: Vec<_> = seqs.iter().map(|s| alert(Seq(*s))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (s, k) in seqs.iter().zip(&keys) {
            assert_eq!(alert_seq(k), Some(Seq(*s)));
        }
    }

    #[test]
    fn time_keys_sort_by_time_then_seq() {
        assert!(time(1, Seq(9)) < time(2, Seq(1)));
        assert!(time(2, Seq(1)) < time(2, Seq(2)));
        assert_eq!(time_seq(&time(77, Seq(5))), Some(Seq(5)));
    }

    #[test]
    fn id_values_round_trip() {
        assert_eq!(
            parse_id_value(&id_value(Seq(42), 1_700_000_000_000_000)),
            Some((Seq(42), 1_700_000_000_000_000))
        );
        assert_eq!(parse_id_value(b"short"), None);
    }

    #[test]
    fn feed_keys_separate_owners() {
        assert_ne!(
            feed("urn:liaison:TJ:a:b", "main"),
            feed("urn:liaison:TJ:a:bmain", "")
        );
    }
}
