//! CAP 1.2 import: arbitrary bytes are read without a panic (and without
//! reading a file or the network: no DTD is ever processed); a document
//! that imports is written back as CAP and imported again to the same
//! alert — the round trip holds for whatever the reader accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison::cap::{self, Layout};
use liaison::proto as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(alert) = cap::import(data) else {
        return;
    };
    let record = pb::AlertRecord {
        seq: 1,
        received_at: None,
        alert: Some(alert.clone()),
        provenance: None,
    };
    for layout in [Layout::Pretty, Layout::OneLine] {
        let doc = cap::export(&record, &|_| None, layout).expect("an alert exports");
        let again = cap::import(doc.as_bytes())
            .unwrap_or_else(|e| panic!("an export does not import: {e}\n{doc}"));
        assert_eq!(again, alert, "the round trip changed the alert\n{doc}");
    }
});
