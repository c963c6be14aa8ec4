//! Every sled key layout, in one place. Integers are fixed-width big-endian so
//! that byte order is numeric order.
//!
//! Tree `log` (alerts and their indexes; written only by the writer thread):
//!
//! | key | value |
//! |---|---|
//! | `a` seq:u64 | prost `AlertRecord` |
//! | `i` id:[u8;16] | seq:u64, received_at_us:u64 |
//! | `o` class:u8 seq:u64 | encoded size:u64 — the agent's outbox (class 0 = priority, 1 = routine) |
//! | `z` seq:u64 | audit record (hash-chained) |
//! | `r` id:[u8;16] kind:u8 recipient-urn 0x00 feed | receipt (time, note) |
//! | `p` id:[u8;16] | the peer broker an imported alert came from (its receipts go back there) |
//! | `q` n:u64 | the receipt journal: receipts of imported alerts, to send back over their link |
//! | `m` name | meta value (`next_seq`, `bytes`, outbox and counters, the sequence reservation: u64; the WAL checkpoint) |
//!
//! Tree `feeds` (durable feed state): key `owner-urn 0x00 feed-name`, value
//! prost `StoredFeed`.

use crate::alert::{AlertId, Seq};

pub const ALERT: u8 = b'a';
pub const ID: u8 = b'i';
pub const OUTBOX: u8 = b'o';
pub const AUDIT: u8 = b'z';
pub const RECEIPT: u8 = b'r';
pub const IMPORTED: u8 = b'p';
pub const JOURNAL: u8 = b'q';
pub const META_NEXT_SEQ: &[u8] = b"mnext_seq";
pub const META_BYTES: &[u8] = b"mbytes";
pub const META_OUTBOX_COUNT: &[u8] = b"moutbox_count";
pub const META_OUTBOX_BYTES: &[u8] = b"moutbox_bytes";
pub const META_FORWARDED: &[u8] = b"mforwarded";
pub const META_EXPIRED: &[u8] = b"mexpired";
pub const META_REJECTED: &[u8] = b"mrejected";
pub const META_INBOX: &[u8] = b"minbox";
/// The store's identity (16 bytes), also kept in the `store-id` file beside
/// the database: a database that lost its contents is told from a new one.
pub const META_STORE_ID: &[u8] = b"mstore_id";
/// Sequences below this one may have been handed out (written ahead of use).
pub const META_SEQ_RESERVED: &[u8] = b"mseq_reserved";
/// The newest write-ahead log record whose batch sled holds on disk, the
/// file then in use, and whether the store was closed cleanly.
pub const META_WAL_CHECKPOINT: &[u8] = b"mwal_checkpoint";

pub fn audit(seq: u64) -> [u8; 9] {
    let mut k = [AUDIT; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn audit_seq(key: &[u8]) -> Option<u64> {
    match key {
        [AUDIT, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Where an imported alert came from.
pub fn imported(id: &AlertId) -> [u8; 17] {
    let mut k = [IMPORTED; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

pub fn journal(n: u64) -> [u8; 9] {
    let mut k = [JOURNAL; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn journal_seq(key: &[u8]) -> Option<u64> {
    match key {
        [JOURNAL, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Prefix of every receipt of one alert.
pub fn receipts_of(id: &AlertId) -> [u8; 17] {
    let mut k = [RECEIPT; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

pub fn receipt(id: &AlertId, kind: u8, recipient: &str, feed: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + recipient.len() + feed.len());
    k.extend_from_slice(&receipts_of(id));
    k.push(kind);
    k.extend_from_slice(recipient.as_bytes());
    k.push(0);
    k.extend_from_slice(feed.as_bytes());
    k
}

/// (kind, recipient, feed) of a receipt key.
pub fn parse_receipt(key: &[u8]) -> Option<(u8, &str, &str)> {
    let rest = key.get(17..)?;
    let (kind, rest) = rest.split_first()?;
    let split = rest.iter().position(|b| *b == 0)?;
    let recipient = std::str::from_utf8(&rest[..split]).ok()?;
    let feed = std::str::from_utf8(&rest[split + 1..]).ok()?;
    Some((*kind, recipient, feed))
}

pub fn outbox(class: u8, seq: Seq) -> [u8; 10] {
    let mut k = [OUTBOX; 10];
    k[1] = class;
    k[2..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

pub fn outbox_seq(key: &[u8]) -> Option<Seq> {
    match key {
        [OUTBOX, _, rest @ ..] => Some(Seq(u64::from_be_bytes(rest.try_into().ok()?))),
        _ => None,
    }
}

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
    fn outbox_keys_sort_by_class_then_seq() {
        assert!(outbox(0, Seq(900)) < outbox(1, Seq(1)));
        assert!(outbox(1, Seq(1)) < outbox(1, Seq(2)));
        assert_eq!(outbox_seq(&outbox(1, Seq(42))), Some(Seq(42)));
        assert!(outbox(1, Seq(u64::MAX)).as_slice() < [OUTBOX + 1].as_slice());
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
    fn receipt_keys_round_trip_and_group_by_alert() {
        let id = AlertId(uuid::Uuid::from_u128(7));
        let key = receipt(&id, 2, "urn:liaison:AF:x:y", "main");
        assert!(key.starts_with(&receipts_of(&id)));
        assert_eq!(parse_receipt(&key), Some((2, "urn:liaison:AF:x:y", "main")));
        assert!(audit(9) < audit(10));
        assert_eq!(audit_seq(&audit(300)), Some(300));
    }

    #[test]
    fn feed_keys_separate_owners() {
        assert_ne!(
            feed("urn:liaison:TJ:a:b", "main"),
            feed("urn:liaison:TJ:a:bmain", "")
        );
    }
}
