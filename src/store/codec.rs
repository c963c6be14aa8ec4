//! The stored form of an alert: a `pb::AlertRecord` (sequence, receive
//! time, the validated alert), encoded without copying the alert body, and
//! decoded back into a [`Record`].
//!
//! An imported alert is stored once, not twice: its provenance keeps the
//! origin broker's signed statement, which holds the alert, so the record
//! leaves out field 3 when the statement's alert is byte for byte the
//! alert's own encoding, and decoding takes the alert from the statement.
//! (A statement encoded otherwise — another encoder's field order, fields
//! this version does not know — keeps both.)

use std::sync::Arc;

use prost::Message;

use super::error::{StoreError, corrupt};
use super::keys;
use super::seal::{Seal, Tree};
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
    let field3 = buf.len();
    message::encode(3, body, &mut buf);
    if let Some(p) = provenance {
        let encoded = &buf[buf.len() - body.encoded_len()..];
        if attested_alert_bytes(p) == Some(encoded) {
            buf.truncate(field3);
        }
        message::encode(4, p, &mut buf);
    }
    buf
}

/// The encoded alert inside an attestation's statement: field 1 of the
/// `AttestedAlert`, when the statement starts with it.
fn attested_alert_bytes(p: &pb::Provenance) -> Option<&[u8]> {
    let mut statement = p.attestation.as_ref()?.statement.as_slice();
    // Field 1, length-delimited.
    let (&0x0a, rest) = statement.split_first()? else {
        return None;
    };
    statement = rest;
    let len = usize::try_from(prost::encoding::decode_varint(&mut statement).ok()?).ok()?;
    statement.get(..len)
}

/// The alert an imported record keeps only in its attestation.
fn attested_alert(p: &pb::Provenance) -> Option<pb::Alert> {
    let statement = &p.attestation.as_ref()?.statement;
    pb::AttestedAlert::decode(statement.as_slice()).ok()?.alert
}

/// Decodes the record stored under `seq`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the alert when the bytes do not decode or
/// the alert no longer passes the checks it passed when it was stored.
pub fn decode_record(seal: &Seal, seq: Seq, bytes: &[u8]) -> Result<Arc<Record>, StoreError> {
    let what = || format!("alert {seq}");
    let bytes = seal.open(&what(), Tree::Log, &keys::alert(seq), bytes)?;
    let rec = pb::AlertRecord::decode(bytes.as_ref()).map_err(|e| corrupt(&what(), e))?;
    let body = match rec.alert {
        Some(body) => body,
        None => rec
            .provenance
            .as_ref()
            .and_then(attested_alert)
            .ok_or_else(|| corrupt(&what(), "no alert"))?,
    };
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

    fn body() -> pb::Alert {
        pb::Alert {
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
        }
    }

    fn record(provenance: Option<pb::Provenance>) -> Record {
        Record {
            seq: Seq(77),
            received_at: from_micros(1_764_000_000_123_456),
            alert: Alert::from_stored(body()).unwrap(),
            provenance: provenance.map(Arc::new),
        }
    }

    fn provenance(statement: Vec<u8>) -> pb::Provenance {
        pb::Provenance {
            origin_broker: "urn:liaison:TJ:liaison:broker".into(),
            attestation: Some(pb::Attestation {
                statement,
                signature: vec![7; 64],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn encode_record_matches_the_protobuf_encoding_and_decodes_back() {
        let record = record(None);
        let bytes = encode_record(&record);
        assert_eq!(bytes, record.to_proto().encode_to_vec());
        assert_eq!(
            *decode_record(&Seal::clear(), Seq(77), &bytes).unwrap(),
            record
        );
        assert!(decode_record(&Seal::clear(), Seq(77), &bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn an_imported_alert_is_stored_once_and_decodes_back_whole() {
        let statement = pb::AttestedAlert {
            alert: Some(body()),
            received_at: None,
            broker: "urn:liaison:TJ:liaison:broker".into(),
        }
        .encode_to_vec();
        let imported = record(Some(provenance(statement)));
        let bytes = encode_record(&imported);
        let full = imported.to_proto().encode_to_vec();
        assert_eq!(
            full.len() - bytes.len(),
            prost::encoding::message::encoded_len(3, &body()),
            "field 3 left out"
        );
        assert!(
            pb::AlertRecord::decode(bytes.as_slice())
                .unwrap()
                .alert
                .is_none()
        );
        assert_eq!(
            *decode_record(&Seal::clear(), Seq(77), &bytes).unwrap(),
            imported
        );
    }

    #[test]
    fn a_statement_encoded_otherwise_keeps_the_alert_in_the_record() {
        // The statement's alert carries a field this version does not know:
        // its bytes differ from the alert's own encoding.
        let mut alert = body().encode_to_vec();
        prost::encoding::string::encode(999, &"from a newer version".to_owned(), &mut alert);
        let mut statement = Vec::new();
        prost::encoding::bytes::encode(1, &alert, &mut statement);
        let imported = record(Some(provenance(statement)));
        let bytes = encode_record(&imported);
        assert_eq!(bytes, imported.to_proto().encode_to_vec());
        assert_eq!(
            *decode_record(&Seal::clear(), Seq(77), &bytes).unwrap(),
            imported
        );
        // A record without field 3 whose statement is garbage is damage.
        let mut broken = imported.to_proto();
        broken.alert = None;
        broken.provenance = Some(provenance(vec![0xff; 9]));
        assert!(decode_record(&Seal::clear(), Seq(77), &broken.encode_to_vec()).is_err());
    }
}
