//! An alert as it arrives from the network: protobuf bytes, decoded and
//! validated. Never a panic; what passes validation can be stored and read
//! back as the same alert.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use liaison::alert::{Alert, Limits, validate};
use liaison::proto as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::PublishRequest::decode(data) else {
        return;
    };
    let Some(msg) = req.alert else { return };
    let origin = "urn:liaison:TJ:border-guard:ishkashim".parse().expect("urn");
    if let Ok(alert) = validate(msg, &origin, &Limits::default(), SystemTime::now()) {
        let stored = Alert::from_stored(alert.body.clone()).expect("a valid alert reads back");
        assert_eq!(stored, alert);
        let bytes = alert.body.encode_to_vec();
        assert_eq!(pb::Alert::decode(bytes.as_slice()).expect("round trip"), alert.body);
    }
});
