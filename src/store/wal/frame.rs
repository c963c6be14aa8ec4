//! The bytes of a write-ahead log file: its header and the frame of each
//! record. The writer encodes with [`encode`], recovery (and the tests)
//! read with [`parse`]; nothing else knows the layout.
//!
//! ```text
//! file:   [magic "LIAISWAL"][version u32 LE = 2][size u64 LE][zeros 12]  (32 bytes)
//!         records from offset 32, the rest of the file zeros or stale records
//! record: [crc32 u32 LE][len u32 LE][lsn u64 LE][synced u64 LE][payload: len bytes]
//! ```
//!
//! The CRC covers everything after it (length, LSN, `synced` and payload).
//! `synced` is the newest LSN known to be on disk when the record was
//! written: it lets recovery tell a record that was certainly made durable
//! (and so may have been acknowledged) from one that may have been lost in
//! a power cut before its sync. `size` is the size the file was created
//! with; a file shorter than that was cut.

pub const MAGIC: &[u8; 8] = b"LIAISWAL";
pub const VERSION: u32 = 2;
pub const FILE_HEADER: usize = 32;
pub const RECORD_HEADER: usize = 24;
/// LSNs are below this (one per commit group: at a million groups a second
/// the log would need 146,000 years to reach it). A frame that claims one
/// at or above it is damage, whatever its CRC says, so that arithmetic on
/// LSNs (the next one, the one after the newest) cannot overflow.
pub const LSN_LIMIT: u64 = 1 << 62;

/// The header of a file created with `size` bytes.
pub fn file_header(size: u64) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&size.to_le_bytes());
    h
}

/// What a file's first bytes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// This format; the size the file was created with.
    V2 { size: u64 },
    /// A file of the first format (16-byte record headers, no file header).
    V1,
    /// Nothing written yet.
    Empty,
}

pub fn header(bytes: &[u8]) -> Header {
    match bytes.get(..FILE_HEADER) {
        Some(h) if &h[..8] == MAGIC && h[8..12] == VERSION.to_le_bytes() => Header::V2 {
            size: u64::from_le_bytes(h[12..20].try_into().unwrap_or_default()),
        },
        _ if bytes.iter().take(FILE_HEADER).all(|b| *b == 0) => Header::Empty,
        _ => Header::V1,
    }
}

/// Appends the frame of one record to `out`.
pub fn encode(lsn: u64, synced: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // Payloads are bounded by the group size limit, far below 4 GiB.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub lsn: u64,
    pub synced: u64,
    /// Where its header starts.
    pub offset: usize,
    /// Where its payload starts and ends.
    pub payload: (usize, usize),
}

impl Frame {
    pub fn end(&self) -> usize {
        self.payload.1
    }
}

/// What is at an offset of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Record(Frame),
    /// Zeros: nothing was ever written here.
    Zeros,
    /// Bytes that are not a record (a torn write, damage, or the middle of
    /// an older record); `lsn` is what its header claims, when it has one.
    Damaged {
        lsn: Option<u64>,
    },
}

/// Reads what is at `offset` of `bytes`.
pub fn parse(bytes: &[u8], offset: usize) -> At {
    let Some(head) = bytes.get(offset..offset + RECORD_HEADER) else {
        let rest = bytes.get(offset..).unwrap_or_default();
        return if rest.iter().all(|b| *b == 0) {
            At::Zeros
        } else {
            At::Damaged { lsn: None }
        };
    };
    if head.iter().all(|b| *b == 0) {
        return At::Zeros;
    }
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
    let (lsn, synced) = (word(8), word(16));
    let start = offset + RECORD_HEADER;
    let Some(payload) = bytes.get(start..start + len) else {
        return At::Damaged { lsn: Some(lsn) };
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[4..]);
    hasher.update(payload);
    if lsn == 0 || lsn >= LSN_LIMIT || hasher.finalize() != crc {
        return At::Damaged { lsn: Some(lsn) };
    }
    At::Record(Frame {
        lsn,
        synced,
        offset,
        payload: (start, start + len),
    })
}

/// The records of a file of the first format, in order, up to the first
/// that does not check (`[crc][len][lsn][payload]`, no file header).
pub fn v1_records(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    const V1_HEADER: usize = 16;
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(head) = bytes.get(offset..offset + V1_HEADER) {
        let crc = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
        let lsn = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(offset + V1_HEADER..offset + V1_HEADER + len) else {
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[4..]);
        hasher.update(payload);
        if lsn == 0 || lsn >= LSN_LIMIT || hasher.finalize() != crc {
            break;
        }
        out.push((lsn, payload));
        offset += V1_HEADER + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut f = file_header(4096).to_vec();
        for (lsn, synced, payload) in records {
            encode(*lsn, *synced, payload, &mut f);
        }
        f.resize(4096, 0);
        f
    }

    #[test]
    fn records_parse_back_and_any_flipped_byte_is_damage() {
        let f = file(&[(7, 5, b"abc"), (8, 7, b"")]);
        assert_eq!(header(&f), Header::V2 { size: 4096 });
        let At::Record(first) = parse(&f, FILE_HEADER) else {
            panic!("first record");
        };
        assert_eq!((first.lsn, first.synced), (7, 5));
        assert_eq!(&f[first.payload.0..first.payload.1], b"abc");
        let At::Record(second) = parse(&f, first.end()) else {
            panic!("second record");
        };
        assert_eq!(second.lsn, 8);
        assert_eq!(parse(&f, second.end()), At::Zeros);
        for i in FILE_HEADER..second.end() {
            let mut bad = f.clone();
            bad[i] ^= 0x10;
            let at = if i < first.end() {
                FILE_HEADER
            } else {
                first.end()
            };
            assert!(
                matches!(parse(&bad, at), At::Damaged { .. }),
                "byte {i} flipped"
            );
        }
        assert_eq!(
            parse(&f[..first.end() - 1], FILE_HEADER),
            At::Damaged { lsn: Some(7) }
        );
    }

    #[test]
    fn headers_tell_formats_apart() {
        assert_eq!(header(&[0; 64]), Header::Empty);
        assert_eq!(header(&[1; 64]), Header::V1);
        let mut v1 = Vec::new();
        for (lsn, payload) in [(1u64, &b"ab"[..]), (2, b"c")] {
            let start = v1.len();
            v1.extend_from_slice(&[0; 4]);
            v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v1.extend_from_slice(&lsn.to_le_bytes());
            v1.extend_from_slice(payload);
            let crc = crc32fast::hash(&v1[start + 4..]);
            v1[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        }
        v1.extend_from_slice(&[0; 40]);
        assert_eq!(v1_records(&v1), vec![(1, &b"ab"[..]), (2, &b"c"[..])]);
    }
}
