//! CAP 1.2 on the command line: `publish --cap FILE` and `--format cap` of
//! `get`, `history` and `subscribe` (docs/cap.md).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use tonic::transport::Channel;

use super::alert_args::AlertArgs;
use liaison::cap::{self, Layout};
use liaison::json::parse_enum;
use liaison::proto as pb;
use liaison::proto::broker_client::BrokerClient;

/// How `get`, `history` and `subscribe` print alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One readable line per alert (`get`: pretty JSON).
    Text,
    /// One JSON object per line.
    Json,
    /// CAP 1.2 XML: `get` prints one indented document, `history` and
    /// `subscribe` one document per line.
    Cap,
}

/// The alert of the CAP document in `path` ("-": standard input), with the
/// markings and category the flags give explicitly.
///
/// # Errors
/// When the file cannot be read, or the document is not a CAP 1.2 alert
/// Liaison can carry (the message names the element).
pub fn alert_from_cap(path: &Path, flags: &AlertArgs) -> Result<pb::Alert> {
    let mut doc = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(cap::MAX_BYTES as u64 + 1)
            .read_to_end(&mut doc)
            .context("reading the CAP document from standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(cap::MAX_BYTES as u64 + 1).read_to_end(&mut doc))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    let mut alert = cap::import(&doc)?;
    if let Some(id) = &flags.id {
        alert.id = id.clone();
    }
    if let Some(c) = &flags.category {
        alert.category = parse_enum::<pb::Category>("--category", c)?;
    }
    let m = alert.marking.get_or_insert_with(Default::default);
    if let Some(t) = &flags.tlp {
        m.tlp = parse_enum::<pb::Tlp>("--tlp", t)?;
    }
    if !flags.releasable_to.is_empty() {
        m.releasable_to = flags.releasable_to.clone();
    }
    if !flags.recipients.is_empty() {
        m.recipients = flags.recipients.clone();
    }
    if !flags.handling_codes.is_empty() {
        m.handling_codes = flags.handling_codes.clone();
    }
    Ok(alert)
}

/// `record` as a CAP document; the alerts it references are asked of the
/// broker, for the sender and time CAP's references name.
///
/// # Errors
/// When the record holds no alert.
pub async fn document(
    client: &mut BrokerClient<Channel>,
    record: &pb::AlertRecord,
    layout: Layout,
) -> Result<String> {
    let mut earlier = HashMap::new();
    for id in record.alert.iter().flat_map(|a| &a.references) {
        // One the caller may not read is named from this alert's fields.
        if let Ok(r) = client
            .get_alert(pb::GetAlertRequest { id: id.clone() })
            .await
        {
            earlier.insert(id.clone(), r.into_inner());
        }
    }
    Ok(cap::export(record, &|id| earlier.get(id).cloned(), layout)?)
}
