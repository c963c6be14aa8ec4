//! Receipts: the record that a node received an alert (its feed acknowledged
//! the delivery) or that an officer explicitly acknowledged it, routed back
//! to the originator's agency.

use std::time::SystemTime;

use crate::alert::{AlertId, origin_proto, timestamp};
use crate::identity::NodeId;
use crate::proto as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// A feed of the recipient acknowledged the delivery.
    Delivered,
    /// An officer explicitly acknowledged the alert (CAP-style Ack).
    Acknowledged,
}

impl ReceiptKind {
    pub fn code(self) -> u8 {
        match self {
            ReceiptKind::Delivered => 1,
            ReceiptKind::Acknowledged => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ReceiptKind::Delivered),
            2 => Some(ReceiptKind::Acknowledged),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Acknowledged => "acknowledged",
        }
    }
}

/// One receipt. At most one exists per (alert, kind, recipient, feed): the
/// first is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub alert: AlertId,
    pub kind: ReceiptKind,
    pub recipient: NodeId,
    /// The feed that acknowledged the delivery (empty for an acknowledgement).
    pub feed: String,
    pub at: SystemTime,
    pub note: String,
}

impl Receipt {
    pub fn to_proto(&self) -> pb::Receipt {
        pb::Receipt {
            alert_id: self.alert.to_string(),
            kind: match self.kind {
                ReceiptKind::Delivered => pb::ReceiptKind::Delivered,
                ReceiptKind::Acknowledged => pb::ReceiptKind::Acknowledged,
            } as i32,
            recipient: Some(origin_proto(&self.recipient)),
            feed: self.feed.clone(),
            at: Some(timestamp(self.at)),
            note: self.note.clone(),
        }
    }
}
