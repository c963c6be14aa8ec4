//! Durable feed state in the `feeds` tree: key `owner-urn 0x00 name`,
//! value [`StoredFeed`]. Written directly (not through the write-ahead
//! log): a cursor becomes durable with the next checkpoint, at most a
//! second later, or at once with [`Store::flush`].

use prost::Message;

use super::error::{StoreError, corrupt};
use super::seal::Tree;
use super::{Store, keys};
use crate::proto as pb;

/// Persisted state of one durable feed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredFeed {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<pb::Filter>,
    /// Every seq up to and including this one is acknowledged or unwanted.
    #[prost(uint64, tag = "2")]
    pub ack_floor: u64,
    /// Seqs above the floor that are acknowledged already.
    #[prost(uint64, repeated, tag = "3")]
    pub acked: Vec<u64>,
    #[prost(uint64, tag = "4")]
    pub created_us: u64,
    /// When the feed last received an acknowledgement (0: never).
    #[prost(uint64, tag = "5")]
    pub last_ack_us: u64,
}

impl Store {
    /// Loads the state of a durable feed.
    ///
    /// # Errors
    /// On a storage failure or corrupt state.
    pub fn load_feed(&self, owner: &str, name: &str) -> Result<Option<StoredFeed>, StoreError> {
        let key = keys::feed(owner, name);
        self.inner
            .feeds
            .get(&key)?
            .map(|v| {
                let v = self.inner.seal.open("feed", Tree::Feeds, &key, &v)?;
                StoredFeed::decode(v.as_ref()).map_err(|e| corrupt("feed", e))
            })
            .transpose()
    }

    /// Saves the state of a durable feed (durable with the next checkpoint).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn save_feed(&self, owner: &str, name: &str, feed: &StoredFeed) -> Result<(), StoreError> {
        let key = keys::feed(owner, name);
        let value = self
            .inner
            .seal
            .seal(Tree::Feeds, &key, &feed.encode_to_vec());
        self.inner.feeds.insert(key, value)?;
        self.mark_dirty();
        Ok(())
    }

    /// Every durable feed as (owner, name, state).
    ///
    /// # Errors
    /// On a storage failure or corrupt state.
    pub fn list_feeds(&self) -> Result<Vec<(String, String, StoredFeed)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.feeds.iter() {
            let (k, v) = kv?;
            let split = k
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("feed key", format!("{k:?}")))?;
            let owner = String::from_utf8_lossy(&k[..split]).into_owned();
            let name = String::from_utf8_lossy(&k[split + 1..]).into_owned();
            let v = self.inner.seal.open("feed", Tree::Feeds, &k, &v)?;
            out.push((
                owner,
                name,
                StoredFeed::decode(v.as_ref()).map_err(|e| corrupt("feed", e))?,
            ));
        }
        Ok(out)
    }
}
