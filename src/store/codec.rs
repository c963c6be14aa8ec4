//! The stored form of an alert: a `pb::AlertRecord` (sequence, receive
//! time, the validated alert), encoded without copying the alert body, and
//! decoded back into a [`Record`].

use std::sync::Arc;

use prost::Message;

use super::error::{StoreError, corrupt};
use crate::alert::{Alert, Record, Seq, from_micros};
use crate::proto as pb;

/// Encodes a record as a `pb::AlertRecord` without cloning the alert body
/// (the body is the bulk of the bytes; `Record::to_proto` would copy it).
pub fn encode_record(record: &Record) -> Vec<u8> {
    use prost::encoding::{message, uint64};
    let received_at = crate::alert::timestamp(record.received_at);
    let body = &record.alert.body;
    let provenance = record.provenance.as_deref();
    let len = uint64::encoded_len(1, &record.seq.0)
        + message::encoded_len(2, &received_at)
        + message::encoded_len(3, body)
        + provenance.map_or(0, |p| message::encoded_len(4, p));
    let mut buf = Vec::with_capacity(len);
    uint64::encode(1, &record.seq.0, &mut buf);
    message::encode(2, &received_at, &mut buf);
    message::encode(3, body, &mut buf);
    if let Some(p) = provenance {
        message::encode(4, p, &mut buf);
    }
    buf
}

/// Decodes the record stored under `seq`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the alert when the bytes do not decode or
/// the alert no longer passes the checks it passed when it was stored.
pub fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Arc<Record>, StoreError> {
    let what = || format!("alert {seq}");
    let rec = pb::AlertRecord::decode(bytes).map_err(|e| corrupt(&what(), e))?;
    let body = rec.alert.ok_or_else(|| corrupt(&what(), "no alert"))?;
    let alert = Alert::from_stored(body).map_err(|e| corrupt(&what(), e))?;
    let received_at = rec
        .received_at
        .as_ref()
        .and_then(crate::alert::system_time)
        .unwrap_or_else(|| from_micros(0));
    Ok(Arc::new(Record {
        seq,
        received_at,
        alert,
        provenance: rec.provenance.map(Arc::new),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_record_matches_the_protobuf_encoding_and_decodes_back() {
        let body = crate::proto::Alert {
            id: "0192b8a0-7d3c-7cc1-9a0e-3f1c2b4d5e6f".into(),
            headline: "x".repeat(300),
            origin: Some(crate::alert::origin_proto(
                &"urn:liaison:TJ:border-guard:ishkashim".parse().unwrap(),
            )),
            status: 1,
            category: 1,
            severity: 1,
            urgency: 1,
            marking: Some(crate::proto::Marking {
                tlp: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = Record {
            seq: Seq(77),
            received_at: from_micros(1_764_000_000_123_456),
            alert: Alert::from_stored(body).unwrap(),
            provenance: None,
        };
        let bytes = encode_record(&record);
        assert_eq!(bytes, record.to_proto().encode_to_vec());
        assert_eq!(*decode_record(Seq(77), &bytes).unwrap(), record);
        assert!(decode_record(Seq(77), &bytes[..bytes.len() - 3]).is_err());
    }
}
