//! The newest committed records, decoded, for live feeds: consecutive
//! sequence numbers, bounded by total encoded size.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::alert::{Record, Seq};

pub struct Recent {
    records: VecDeque<(Arc<Record>, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl Recent {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds the next committed record (its seq must follow the newest one;
    /// otherwise the cache restarts from it).
    pub fn push(&mut self, record: Arc<Record>, size: usize) {
        if self
            .records
            .back()
            .is_some_and(|(r, _)| r.seq.next() != record.seq)
        {
            self.clear();
        }
        self.bytes += size;
        self.records.push_back((record, size));
        while self.bytes > self.max_bytes {
            match self.records.pop_front() {
                Some((_, s)) => self.bytes -= s,
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Forgets every record up to and including `seq` (pruned from the log).
    pub fn forget_through(&mut self, seq: Seq) {
        while self.records.front().is_some_and(|(r, _)| r.seq <= seq) {
            if let Some((_, s)) = self.records.pop_front() {
                self.bytes -= s;
            }
        }
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        let first = self.records.front()?.0.seq;
        let i = usize::try_from(seq.0.checked_sub(first.0)?).ok()?;
        (i < self.records.len()).then_some(i)
    }

    pub fn get(&self, seq: Seq) -> Option<Arc<Record>> {
        self.index(seq).map(|i| self.records[i].0.clone())
    }

    /// Up to `limit` consecutive records starting at `from`; empty when `from`
    /// is not cached.
    pub fn range(&self, from: Seq, limit: usize) -> Vec<Arc<Record>> {
        match self.index(from) {
            Some(i) => self
                .records
                .range(i..)
                .take(limit)
                .map(|(r, _)| r.clone())
                .collect(),
            None => Vec::new(),
        }
    }
}
