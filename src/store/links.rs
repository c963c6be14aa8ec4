//! Durable state of federation links in the `links` tree: key the peer's
//! name, value [`StoredLink`]. Written directly, like feed state: durable
//! with the next checkpoint (at most a second later). A crash may so
//! re-export alerts the peer had answered already; the peer answers them
//! as duplicates, so nothing is stored twice.

use prost::Message;

use super::Store;
use super::error::{StoreError, corrupt};
use super::seal::Tree;

/// Export cursor and counters of one federation link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredLink {
    /// Every local sequence up to and including this one is answered by the
    /// peer, or was not for the peer.
    #[prost(uint64, tag = "1")]
    pub exported_through: u64,
    /// Alerts the peer stored.
    #[prost(uint64, tag = "2")]
    pub exported: u64,
    /// Alerts the peer already had (another path, or a re-send).
    #[prost(uint64, tag = "3")]
    pub duplicates: u64,
    /// Alerts the peer refused.
    #[prost(uint64, tag = "4")]
    pub refused_by_peer: u64,
    /// Alerts from the peer stored here.
    #[prost(uint64, tag = "5")]
    pub imported: u64,
    /// Alerts from the peer refused here.
    #[prost(uint64, tag = "6")]
    pub refused: u64,
    /// Alerts retention removed before they could be exported.
    #[prost(uint64, tag = "7")]
    pub missed: u64,
    /// When the peer was last heard from (microseconds since the epoch).
    #[prost(uint64, tag = "8")]
    pub last_contact_us: u64,
    /// The last error of the link, if it is down.
    #[prost(string, tag = "9")]
    pub last_error: String,
    /// Every receipt journal entry up to this number is sent and stored by
    /// the peer (or not for it).
    #[prost(uint64, tag = "10")]
    pub receipts_through: u64,
    /// Receipts sent back to the peer, and received from it.
    #[prost(uint64, tag = "11")]
    pub receipts_sent: u64,
    #[prost(uint64, tag = "12")]
    pub receipts_received: u64,
}

impl Store {
    /// Loads the state of the link with `peer`.
    ///
    /// # Errors
    /// On a storage failure or corrupt state.
    pub fn load_link(&self, peer: &str) -> Result<Option<StoredLink>, StoreError> {
        self.inner
            .links
            .get(peer.as_bytes())?
            .map(|v| {
                let v = self
                    .inner
                    .seal
                    .open("link", Tree::Links, peer.as_bytes(), &v)?;
                StoredLink::decode(v.as_ref()).map_err(|e| corrupt("link", e))
            })
            .transpose()
    }

    /// Saves the state of the link with `peer` (durable with the next
    /// checkpoint).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn save_link(&self, peer: &str, link: &StoredLink) -> Result<(), StoreError> {
        let value = self
            .inner
            .seal
            .seal(Tree::Links, peer.as_bytes(), &link.encode_to_vec());
        self.inner.links.insert(peer.as_bytes(), value)?;
        self.mark_dirty();
        Ok(())
    }
}
