//! Offline bundles this store imported, or whose receipts it applied, in
//! the `bundles` tree: key the bundle's UUID (16 bytes), value
//! [`StoredBundle`]. A bundle is imported once: its id is remembered after
//! its alerts are stored, so a replay is refused and a crash in between
//! only makes a second import answer the alerts as duplicates. Written
//! directly, like feed state, and flushed by the caller before it answers.

use prost::Message;

use super::Store;
use super::error::{StoreError, corrupt};
use super::seal::Tree;

/// What this store did with one bundle.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBundle {
    /// The sender's identity (URN).
    #[prost(string, tag = "1")]
    pub from: String,
    /// `outbox`, `inbox` or `receipt`.
    #[prost(string, tag = "2")]
    pub kind: String,
    /// When it was imported (microseconds since the epoch).
    #[prost(uint64, tag = "3")]
    pub at_us: u64,
    /// Alerts stored, already present, refused, left for a later bundle
    /// (for a receipt: entries applied).
    #[prost(uint64, tag = "4")]
    pub stored: u64,
    #[prost(uint64, tag = "5")]
    pub duplicates: u64,
    #[prost(uint64, tag = "6")]
    pub refused: u64,
    #[prost(uint64, tag = "7")]
    pub retry: u64,
}

impl Store {
    /// What this store did with bundle `id`, if it imported it.
    ///
    /// # Errors
    /// On a storage failure or a corrupt entry.
    pub fn bundle_seen(&self, id: &uuid::Uuid) -> Result<Option<StoredBundle>, StoreError> {
        let key = id.as_bytes();
        self.inner
            .bundles
            .get(key)?
            .map(|v| {
                let v = self.inner.seal.open("bundle", Tree::Bundles, key, &v)?;
                StoredBundle::decode(v.as_ref()).map_err(|e| corrupt("bundle", e))
            })
            .transpose()
    }

    /// Remembers that bundle `id` was imported (durable with the next
    /// checkpoint, or at once with [`Store::flush`]).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn remember_bundle(
        &self,
        id: &uuid::Uuid,
        bundle: &StoredBundle,
    ) -> Result<(), StoreError> {
        let key = id.as_bytes();
        let value = self
            .inner
            .seal
            .seal(Tree::Bundles, key, &bundle.encode_to_vec());
        self.inner.bundles.insert(key, value)?;
        self.mark_dirty();
        Ok(())
    }
}
