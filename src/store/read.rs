//! Reads: by sequence, by alert id, ranges, and the sequence at a time.
//! Readers never go through the writer; they see what the head says is
//! committed, from the cache of newest records or from the log.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::corrupt;
use super::{Store, StoreError, codec, keys};
use crate::alert::{AlertId, Record, Seq};

impl Store {
    /// Reads the record with sequence `seq`.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn get(&self, seq: Seq) -> Result<Option<Arc<Record>>, StoreError> {
        // Past the head are records of a group being committed: not yet on
        // disk, so not yet visible.
        if seq > self.head() {
            return Ok(None);
        }
        if let Some(r) = self.recent().get(seq) {
            return Ok(Some(r));
        }
        self.inner
            .log
            .get(keys::alert(seq))?
            .map(|v| codec::decode_record(&self.inner.seal, seq, &v))
            .transpose()
    }

    /// Reads the record of an alert id.
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn get_by_id(&self, id: &AlertId) -> Result<Option<Arc<Record>>, StoreError> {
        match self.inner.log.get(keys::id(id))? {
            Some(v) => {
                let (seq, _) = keys::parse_id_value(&v).ok_or_else(|| corrupt("id index", id))?;
                self.get(seq)
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` records with sequence `from` or later, in order.
    /// Sequences may have gaps (retention, or a recovery that moved the
    /// sequence on).
    ///
    /// # Errors
    /// On a storage failure or a corrupt record.
    pub fn scan(&self, from: Seq, limit: usize) -> Result<Vec<Arc<Record>>, StoreError> {
        let cached = self.recent().range(from, limit);
        if !cached.is_empty() && cached[0].seq == from {
            return Ok(cached);
        }
        let mut out = Vec::new();
        for kv in self
            .inner
            .log
            .range(keys::alert(from)..keys::alert(self.head().next()))
            .take(limit)
        {
            let (k, v) = kv?;
            let seq = keys::alert_seq(&k).ok_or_else(|| corrupt("alert key", format!("{k:?}")))?;
            out.push(codec::decode_record(&self.inner.seal, seq, &v)?);
        }
        Ok(out)
    }

    /// The oldest retained sequence, if any.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn first_seq(&self) -> Result<Option<Seq>, StoreError> {
        self.first_at_or_after(Seq(0))
    }

    /// The first stored sequence at or after `seq`.
    fn first_at_or_after(&self, seq: Seq) -> Result<Option<Seq>, StoreError> {
        let first = self
            .inner
            .log
            .range(keys::alert(seq)..keys::alert(Seq(u64::MAX)))
            .next()
            .transpose()?;
        Ok(first.and_then(|(k, _)| keys::alert_seq(&k)))
    }

    /// The first sequence received at or after `t` (the next one to be
    /// assigned when there is none).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn seq_at_time(&self, t: SystemTime) -> Result<Seq, StoreError> {
        // Receive times never decrease with the sequence, so a binary search
        // over the stored records needs no time index (one insert per alert
        // fewer on the hot path). The search is over sequence numbers;
        // absent ones (gaps) stand for the next record that is there.
        let after_head = self.head().next();
        let Some(first) = self.first_seq()? else {
            return Ok(after_head);
        };
        let (mut lo, mut hi) = (first.0, after_head.0);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let received = match self.first_at_or_after(Seq(mid))? {
                Some(seq) if seq < after_head => self.get(seq)?.map(|r| (seq, r.received_at)),
                _ => None,
            };
            match received {
                Some((_, at)) if at >= t => hi = mid,
                Some((seq, _)) => lo = seq.0 + 1,
                None => hi = mid,
            }
        }
        Ok(self
            .first_at_or_after(Seq(lo))?
            .filter(|s| *s < after_head)
            .unwrap_or(after_head))
    }

    /// Total encoded size of the retained alerts, in bytes.
    ///
    /// # Errors
    /// Never as of now; kept for stores that count on disk.
    pub fn log_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.meta().bytes)
    }
}
