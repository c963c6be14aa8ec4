//! Deciding, at open, what the write-ahead log left to replay — and whether
//! what it holds can be trusted.
//!
//! After a crash the log normally ends in a *torn tail*: the newest
//! group(s), written but perhaps not synced, so nobody was answered for
//! them; they are discarded. Anything else that is missing is *damage*,
//! and the store refuses to open rather than lose acknowledged alerts
//! quietly (and then hand their sequence numbers to other alerts):
//!
//! - a record missing or damaged although a later record says (in its
//!   `synced` field) that the log was on disk beyond it;
//! - a file missing that the last checkpoint names as the one in use, or
//!   that a full file's end marker says the log goes on in;
//! - a file shorter than it was created (cut).
//!
//! The operator may then choose ([`Mode`]) to keep what comes before the
//! damage, or every intact record; the choice and what it cost are logged
//! and audited by the caller. Whenever records that may have been
//! acknowledged are discarded (a damaged tail cannot be told from a torn
//! one), the caller moves the sequence numbers past everything that may
//! have been handed out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::frame::{self, At, FILE_HEADER, Frame, Header, RECORD_HEADER};
use crate::store::command::{Op, decode_ops};

/// What to do when the log is damaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse to open (the default): nothing acknowledged is dropped
    /// without an operator's decision.
    #[default]
    Strict,
    /// Replay up to the first damaged or missing record and discard the
    /// rest (RocksDB's "point in time" recovery).
    PointInTime,
    /// Replay every intact record, skipping the damaged or missing ones.
    SkipDamaged,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::PointInTime => "point-in-time",
            Mode::SkipDamaged => "skip-damaged",
        }
    }
}

/// The checkpoint as the last run left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record up to this LSN is in sled.
    pub lsn: u64,
    /// The last run stopped cleanly: nothing above `lsn` is needed.
    pub clean: bool,
    /// The file in use at the checkpoint.
    pub active: Option<u32>,
    /// Written by a version that recorded only the LSN: nothing else is
    /// known, so the checks that need more are skipped.
    pub legacy: bool,
}

/// One file of the log, read whole.
pub struct WalFile {
    pub number: u32,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Damage that stops the store from opening in [`Mode::Strict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub lsn: u64,
    pub detail: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Damage {
            file,
            offset,
            lsn,
            detail,
        } = self;
        write!(
            f,
            "{}, offset {offset}, LSN {lsn}: {detail}",
            file.display()
        )
    }
}

/// What to replay, and what was left out.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Records to apply, in LSN order.
    pub replay: Vec<(u64, &'a [u8])>,
    /// Intact records above the checkpoint that are not replayed.
    pub discarded: Vec<(u64, &'a [u8])>,
    /// The highest LSN any file holds or claims: new records follow it.
    pub newest: u64,
    /// Records that may have been acknowledged were left out (a damaged
    /// tail, or the operator's choice): sequence numbers must move on.
    pub maybe_acked_lost: bool,
    /// The damage found (also what the chosen mode passed over).
    pub damage: Vec<Damage>,
    /// What the log held that is normal after a crash (a torn tail).
    pub notes: Vec<String>,
}

/// A record above the checkpoint, where it was found.
struct Found<'a> {
    file: usize,
    frame: Frame,
    payload: &'a [u8],
}

/// Where reading a file stopped: the offset and what the bytes there
/// claimed to be.
struct Stop {
    file: usize,
    offset: usize,
    claimed: Option<u64>,
}

/// Decides what to replay.
///
/// # Errors
/// The first [`Damage`] found, in [`Mode::Strict`].
pub fn plan<'a>(files: &'a [WalFile], ck: Checkpoint, mode: Mode) -> Result<Plan<'a>, Damage> {
    if files.iter().any(|f| frame::header(&f.bytes) == Header::V1) {
        return Ok(plan_v1(files, ck));
    }
    let mut plan = Plan {
        newest: ck.lsn,
        ..Plan::default()
    };
    let mut found: BTreeMap<u64, Found<'a>> = BTreeMap::new();
    let mut stops = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if let Header::V2 { size } = frame::header(&f.bytes)
            && (f.bytes.len() as u64) < size
            && (ck.active == Some(f.number) || has_records(&f.bytes, ck.lsn))
        {
            plan.damage.push(Damage {
                file: f.path.clone(),
                offset: f.bytes.len() as u64,
                lsn: first_lsn(&f.bytes, ck.lsn).unwrap_or(ck.lsn + 1),
                detail: format!(
                    "the file was cut: it is {} bytes long, and was created with {size}",
                    f.bytes.len()
                ),
            });
        }
        scan(
            i,
            &f.bytes,
            ck.lsn,
            &mut found,
            &mut stops,
            &mut plan.damage,
            f,
        );
    }
    let newest = found.keys().next_back().copied().unwrap_or(ck.lsn);
    plan.newest = plan.newest.max(newest);
    check_files(files, ck, &found, &mut plan.damage);
    // Everything through `attested` is known to have been on disk.
    let attested = found
        .values()
        .map(|f| f.frame.synced)
        .max()
        .unwrap_or(0)
        .max(ck.lsn);
    let mut first_hole = None;
    let mut expected = ck.lsn + 1;
    for lsn in found.keys().copied().chain(std::iter::once(newest + 1)) {
        if lsn > expected && first_hole.is_none() {
            first_hole = Some(expected);
        }
        if lsn > expected && expected <= attested {
            let (file, offset) = location(files, &found, expected, ck);
            plan.damage.push(Damage {
                file,
                offset,
                lsn: expected,
                detail: format!(
                    "{} missing or damaged, although a later record says the log was on disk \
                     through LSN {attested}",
                    if lsn - expected == 1 {
                        "this record is".to_owned()
                    } else {
                        format!("this record and the {} after it are", lsn - expected - 1)
                    }
                ),
            });
        }
        expected = lsn + 1;
    }
    plan.damage.sort_by_key(|d| d.lsn);
    // A record whose write was cut short at the very end of the log.
    if let Some(last) = found.get(&newest)
        && let Some(stop) = stops
            .iter()
            .find(|s| s.file == last.file && s.offset == last.frame.end())
        && stop.claimed == Some(newest + 1)
    {
        plan.newest = plan.newest.max(newest + 1);
        plan.maybe_acked_lost = true;
        plan.notes.push(format!(
            "{}: the record at offset {} (LSN {}) was not written completely (a torn tail: \
             a commit whose sync did not finish before the crash); discarded",
            files[stop.file].path.display(),
            stop.offset,
            newest + 1
        ));
    }
    let first_damage = plan.damage.first().map(|d| d.lsn);
    if mode == Mode::Strict
        && let Some(d) = plan.damage.first()
    {
        return Err(d.clone());
    }
    let cut = match mode {
        Mode::SkipDamaged => None,
        Mode::Strict | Mode::PointInTime => [first_damage, first_hole].into_iter().flatten().min(),
    };
    if first_hole.is_some() || first_damage.is_some() {
        plan.maybe_acked_lost = true;
    }
    if let (Some(hole), None) = (first_hole, first_damage) {
        plan.notes.push(format!(
            "LSN {hole} is missing and no later record says it was on disk (a power cut while \
             the newest commits were being written); it and everything after it are discarded"
        ));
    }
    for (lsn, f) in &found {
        if cut.is_some_and(|c| *lsn >= c) {
            plan.discarded.push((*lsn, f.payload));
        } else {
            plan.replay.push((*lsn, f.payload));
        }
    }
    Ok(plan)
}

/// Reads one file: every record above `above`, and where reading stopped
/// (each stop is followed by a search for the next intact record, so that
/// records after damage are found).
fn scan<'a>(
    index: usize,
    bytes: &'a [u8],
    above: u64,
    found: &mut BTreeMap<u64, Found<'a>>,
    stops: &mut Vec<Stop>,
    damage: &mut Vec<Damage>,
    file: &WalFile,
) {
    if !matches!(frame::header(bytes), Header::V2 { .. }) {
        return;
    }
    let mut offset = FILE_HEADER;
    loop {
        match frame::parse(bytes, offset) {
            At::Record(f) => {
                if f.lsn > above {
                    let payload = &bytes[f.payload.0..f.payload.1];
                    if let Some(other) = found.get(&f.lsn)
                        && other.payload != payload
                    {
                        damage.push(Damage {
                            file: file.path.clone(),
                            offset: f.offset as u64,
                            lsn: f.lsn,
                            detail: "two different records carry this LSN".into(),
                        });
                    }
                    found.entry(f.lsn).or_insert(Found {
                        file: index,
                        frame: f,
                        payload,
                    });
                }
                offset = f.end();
                continue;
            }
            At::Zeros => stops.push(Stop {
                file: index,
                offset,
                claimed: None,
            }),
            At::Damaged { lsn } => stops.push(Stop {
                file: index,
                offset,
                claimed: lsn,
            }),
        }
        match next_record(bytes, offset + 1, above) {
            Some(next) => offset = next,
            None => return,
        }
    }
}

/// The offset of the next intact record above `above` from `from` on.
fn next_record(bytes: &[u8], from: usize, above: u64) -> Option<usize> {
    const PAGE: usize = 4096;
    static ZEROS: [u8; PAGE] = [0; PAGE];
    let last = bytes.len().checked_sub(RECORD_HEADER)?;
    let mut at = from;
    while at <= last {
        // The unused end of a file is zeros: skip them a page at a time (a
        // comparison the C library does). No record starts with a whole
        // header of zeros, so one may start at most a header before the
        // first byte that is not zero.
        let page = (at + PAGE).min(bytes.len());
        if bytes[at] == 0 && bytes[at..page] == ZEROS[..page - at] {
            at = page.saturating_sub(RECORD_HEADER - 1).max(at + 1);
            if page == bytes.len() {
                return None;
            }
            continue;
        }
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or_default());
        // Cheap test first: only a plausible LSN is worth a CRC.
        if lsn > above && lsn - above < 1 << 40 && matches!(frame::parse(bytes, at), At::Record(_))
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn has_records(bytes: &[u8], above: u64) -> bool {
    first_lsn(bytes, above).is_some()
}

fn first_lsn(bytes: &[u8], above: u64) -> Option<u64> {
    let mut offset = FILE_HEADER;
    loop {
        match frame::parse(bytes, offset) {
            At::Record(f) if f.lsn > above => return Some(f.lsn),
            At::Record(f) => offset = f.end(),
            _ => {
                let next = next_record(bytes, offset + 1, above)?;
                offset = next;
            }
        }
    }
}

/// Files the log needs but does not have: the one the checkpoint names
/// (after an unclean stop) and those the end markers point to.
fn check_files(
    files: &[WalFile],
    ck: Checkpoint,
    found: &BTreeMap<u64, Found<'_>>,
    damage: &mut Vec<Damage>,
) {
    let exists = |n: u32| files.iter().any(|f| f.number == n);
    if !ck.clean
        && !ck.legacy
        && let Some(active) = ck.active
        && !exists(active)
    {
        damage.push(Damage {
            file: PathBuf::from(format!("wal/{active}.log")),
            offset: 0,
            lsn: ck.lsn + 1,
            detail: "the file is missing: the last checkpoint names it as the file in use, and \
                     the store was not closed cleanly, so it may hold acknowledged alerts"
                .into(),
        });
    }
    for (lsn, f) in found {
        let Ok(ops) = decode_ops(f.payload) else {
            continue;
        };
        for op in ops {
            if let Op::NextFile(name) = op {
                let name = String::from_utf8_lossy(name);
                let number = name.trim_end_matches(".log").parse::<u32>().ok();
                if number.is_none_or(|n| !exists(n)) {
                    damage.push(Damage {
                        file: PathBuf::from(format!("wal/{name}")),
                        offset: 0,
                        lsn: lsn + 1,
                        detail: format!(
                            "the file is missing: record LSN {lsn} says the log goes on in it"
                        ),
                    });
                }
            }
        }
    }
}

/// Where a missing record should have been: after the record before it,
/// or (when that is not there either) at the start of the file in use.
fn location(
    files: &[WalFile],
    found: &BTreeMap<u64, Found<'_>>,
    lsn: u64,
    ck: Checkpoint,
) -> (PathBuf, u64) {
    if let Some(prev) = lsn.checked_sub(1).and_then(|p| found.get(&p)) {
        return (files[prev.file].path.clone(), prev.frame.end() as u64);
    }
    let file = ck
        .active
        .and_then(|n| files.iter().find(|f| f.number == n))
        .or_else(|| files.first());
    match file {
        Some(f) => (f.path.clone(), FILE_HEADER as u64),
        None => (PathBuf::from("wal"), 0),
    }
}

/// The first format: records above the checkpoint, replayed in order while
/// they follow each other (no damage detection: that format cannot tell).
fn plan_v1(files: &[WalFile], ck: Checkpoint) -> Plan<'_> {
    let mut all: BTreeMap<u64, &[u8]> = BTreeMap::new();
    let mut newest = ck.lsn;
    for f in files {
        if frame::header(&f.bytes) != Header::V1 {
            continue;
        }
        for (lsn, payload) in frame::v1_records(&f.bytes) {
            newest = newest.max(lsn);
            if lsn > ck.lsn {
                all.insert(lsn, payload);
            }
        }
    }
    let mut plan = Plan {
        newest,
        ..Plan::default()
    };
    let mut expected = ck.lsn + 1;
    for (lsn, payload) in all {
        if lsn == expected {
            plan.replay.push((lsn, payload));
            expected += 1;
        } else {
            plan.discarded.push((lsn, payload));
        }
    }
    plan
}

#[cfg(test)]
mod tests;
