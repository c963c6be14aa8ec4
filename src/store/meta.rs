//! The counters in the log's `m…` keys, and the writer's view of the log
//! loaded at open: the next sequence, the newest receive time, and the
//! sequence reservation that keeps a sequence number from ever being given
//! out twice.

use super::codec::decode_record;
use super::command::{Batch, Meta};
use super::error::{StoreError, corrupt};
use super::keys;
use crate::alert::{Seq, micros};

const META_KEYS: [&[u8]; 9] = [
    keys::META_NEXT_SEQ,
    keys::META_BYTES,
    keys::META_OUTBOX_COUNT,
    keys::META_OUTBOX_BYTES,
    keys::META_FORWARDED,
    keys::META_EXPIRED,
    keys::META_REJECTED,
    keys::META_INBOX,
    keys::META_SEQ_RESERVED,
];

fn values(m: &Meta) -> [u64; 9] {
    [
        m.next_seq.0,
        m.bytes,
        m.outbox_count,
        m.outbox_bytes,
        m.forwarded,
        m.expired,
        m.rejected,
        m.inbox,
        m.reserved_seq.0,
    ]
}

/// Reads the counters.
///
/// # Errors
/// On a storage failure.
pub fn load(log: &sled::Tree) -> Result<Meta, StoreError> {
    let mut v = [0u64; 9];
    for (slot, key) in v.iter_mut().zip(META_KEYS) {
        *slot = log
            .get(key)
            .map_err(|e| StoreError::sled("reading the counters", e))?
            .and_then(|b| keys::u64_value(&b))
            .unwrap_or(0);
    }
    Ok(Meta {
        next_seq: Seq(v[0].max(1)),
        bytes: v[1],
        outbox_count: v[2],
        outbox_bytes: v[3],
        forwarded: v[4],
        expired: v[5],
        rejected: v[6],
        inbox: v[7],
        reserved_seq: Seq(v[8]),
    })
}

/// Adds to `batch` the keys whose value differs from `before`.
pub fn save(meta: &Meta, before: &Meta, batch: &mut Batch) {
    for ((key, new), old) in META_KEYS.iter().zip(values(meta)).zip(values(before)) {
        if new != old {
            batch.insert(*key, new.to_be_bytes());
        }
    }
}

/// The writer's view of the log, loaded at open.
#[derive(Debug, Clone, Copy)]
pub struct State {
    pub meta: Meta,
    pub last_received_us: u64,
    /// The next number of the receipt journal.
    pub next_journal: u64,
}

impl State {
    /// Loads the counters and the newest record. When `skip_reserved`, the
    /// next sequence moves past every sequence that may have been handed
    /// out (after a recovery that discarded records), and past `seen`.
    ///
    /// # Errors
    /// On a storage failure or a corrupt newest record.
    pub fn load(
        log: &sled::Tree,
        seal: &super::seal::Seal,
        skip_reserved: bool,
        seen: u64,
    ) -> Result<State, StoreError> {
        let mut meta = load(log)?;
        let mut last_received_us = 0;
        if let Some((k, v)) = log
            .range(keys::alert(Seq(0))..keys::alert(Seq(u64::MAX)))
            .next_back()
            .transpose()
            .map_err(|e| StoreError::sled("reading the newest alert", e))?
        {
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            meta.next_seq = meta.next_seq.max(seq.next());
            last_received_us = micros(decode_record(seal, seq, &v)?.received_at);
        }
        meta.next_seq = meta.next_seq.max(Seq(seen));
        if skip_reserved {
            meta.next_seq = meta.next_seq.max(meta.reserved_seq);
        }
        let next_journal = log
            .range(keys::journal(0)..=keys::journal(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| StoreError::sled("reading the receipt journal", e))?
            .and_then(|(k, _)| keys::journal_seq(&k))
            .map_or(1, |n| n + 1);
        Ok(State {
            meta,
            last_received_us,
            next_journal,
        })
    }

    pub fn head(&self) -> Seq {
        Seq(self.meta.next_seq.0 - 1)
    }

    /// Reserves sequences ahead of use when the next group could come near
    /// the reservation (a group appends at most `max_batch` alerts): the
    /// reservation is then on disk, in an earlier group or this one, before
    /// any sequence it covers is acknowledged.
    pub fn reserve(&mut self, max_batch: u64) {
        let next = self.meta.next_seq.0;
        if next + 2 * max_batch > self.meta.reserved_seq.0 {
            self.meta.reserved_seq = Seq(self.meta.reserved_seq.0.max(next) + 4 * max_batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservation_stays_ahead_of_every_sequence_a_group_can_use() {
        let mut state = State {
            meta: Meta {
                next_seq: Seq(1),
                ..Meta::default()
            },
            last_received_us: 0,
            next_journal: 1,
        };
        let mb = 4096;
        // The store reserves (and flushes) once as it opens.
        state.reserve(mb);
        for group in 0..1000 {
            // What the groups before this one made durable.
            let durable = state.meta.reserved_seq;
            state.reserve(mb);
            // A full group appends `mb` alerts.
            let last = state.meta.next_seq.0 + mb - 1;
            assert!(
                last < durable.0,
                "group {group}: seq {last} beyond {durable:?}"
            );
            state.meta.next_seq = Seq(last + 1);
        }
    }
}
