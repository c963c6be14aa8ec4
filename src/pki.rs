//! The development PKI behind `liaison certs`: a CA, the broker's server
//! certificate and node certificates carrying a liaison identity.
//!
//! Layout of a PKI directory (tooling and clients in other languages rely on
//! it; PEM everywhere, keys mode 0600):
//!
//! ```text
//! D/ca.crt  D/ca.key            the certificate authority
//! D/broker.crt  D/broker.key    the broker (localhost, 127.0.0.1, ::1, --host …)
//! D/<name>.crt  D/<name>.key    a node, SAN URI urn:liaison:<CC>:<agency>:<node>
//! D/ca.crl                      revoked certificates (`liaison certs revoke`)
//! ```
//!
//! Real deployments use their own national PKI; this one exists so that a fresh
//! machine and the tests can run mutual TLS without one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{CountryCode, NodeId};

/// File names of the CA and the broker inside a PKI directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const BROKER_NAME: &str = "broker";
/// The CA's certificate revocation list, beside `ca.crt`; the broker reloads
/// it while running.
pub const CA_CRL: &str = "ca.crl";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "`{0}` is not a valid file name for a node (use [A-Za-z0-9_.-], not starting with a dot)"
    )]
    BadName(String),
    #[error("{path} is not a valid {what}: {reason}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// A certificate and its private key, both PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

/// What a leaf certificate should say; the knobs exist so that tests can
/// build the certificates a broker must refuse.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// SAN URIs (normally exactly one liaison URN).
    pub uris: Vec<String>,
    /// SAN DNS names and IP addresses (for servers).
    pub hosts: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A node certificate for `node`, valid from now for `days`.
    pub fn node(node: &NodeId, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: node.to_string(),
            uris: vec![node.to_string()],
            hosts: Vec::new(),
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate authority able to sign leaves.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// Generates a new self-signed CA valid for ten years.
    ///
    /// # Errors
    /// Fails only if key generation or signing fails.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads `D/ca.crt` and `D/ca.key`.
    ///
    /// # Errors
    /// When either file is missing or not a usable CA.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join(CA_CERT))?;
        let key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
        Ok(Self { cert_pem, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a leaf certificate as described by `spec`.
    ///
    /// # Errors
    /// When a SAN is not encodable or signing fails.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, PkiError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(&spec.common_name);
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for host in &spec.hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into()?),
            });
        }
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The broker's server certificate: localhost, 127.0.0.1, ::1 and `hosts`.
    ///
    /// # Errors
    /// As [`Ca::issue`].
    pub fn issue_broker(&self, hosts: &[String]) -> Result<Leaf, PkiError> {
        self.issue_broker_as(hosts, None)
    }

    /// The broker's certificate, carrying `identity` as its liaison URI as
    /// well when given (a national broker: it acts as a node on federation
    /// links, and signs what it exports with this certificate's key).
    ///
    /// # Errors
    /// As [`Ca::issue`].
    pub fn issue_broker_as(
        &self,
        hosts: &[String],
        identity: Option<&NodeId>,
    ) -> Result<Leaf, PkiError> {
        let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(
            hosts
                .iter()
                .filter(|h| !all.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let now = OffsetDateTime::now_utc();
        self.issue(&LeafSpec {
            common_name: "liaison broker".into(),
            uris: identity.map(ToString::to_string).into_iter().collect(),
            hosts: all,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(825),
        })
    }
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

/// `liaison certs init`: a new CA and broker certificate in `dir`.
///
/// # Errors
/// [`PkiError::Exists`] when `dir/ca.key` exists and `force` is false; I/O
/// and generation errors otherwise.
pub fn init(dir: &Path, hosts: &[String], force: bool) -> Result<Written, PkiError> {
    init_for(dir, hosts, None, force)
}

/// The identity a national broker's certificate carries:
/// `urn:liaison:<CC>:liaison:broker`.
pub fn broker_identity(country: CountryCode) -> NodeId {
    // The agency and node labels are constant and valid.
    NodeId::new(country.as_str(), "liaison", "broker")
        .unwrap_or_else(|_| unreachable!("constant labels"))
}

/// `liaison certs init [--country CC]`: as [`init`]; with a country, the
/// PKI of that state's national broker: the CA is named after the country
/// and the broker's certificate carries [`broker_identity`].
///
/// # Errors
/// As [`init`].
pub fn init_for(
    dir: &Path,
    hosts: &[String],
    country: Option<CountryCode>,
    force: bool,
) -> Result<Written, PkiError> {
    refuse_overwrite(&dir.join(CA_KEY), force)?;
    create_dir(dir)?;
    // A name of its own: two development CAs with one name make a
    // certificate of the other look forged (a bad signature) to a TLS
    // library rather than from an unknown issuer.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let label = country.map_or(String::new(), |c| format!("{c} "));
    let ca = Ca::generate(&format!("Liaison {label}development CA {}", &id[..8]))?;
    let broker = ca.issue_broker_as(hosts, country.map(broker_identity).as_ref())?;
    let mut files = Vec::new();
    files.push(write_file(&dir.join(CA_CERT), &ca.cert_pem, false)?);
    files.push(write_file(
        &dir.join(CA_KEY),
        &ca.key.serialize_pem(),
        true,
    )?);
    files.extend(write_leaf(dir, BROKER_NAME, &broker)?);
    Ok(Written { files })
}

/// `liaison certs issue`: a node certificate for `node` as `dir/<name>.crt|key`.
///
/// # Errors
/// When the name is not a plain file name, the files exist and `force` is
/// false, or the CA cannot be loaded.
pub fn issue_node(
    dir: &Path,
    node: &NodeId,
    name: &str,
    days: i64,
    force: bool,
) -> Result<Written, PkiError> {
    check_name(name)?;
    refuse_overwrite(&dir.join(format!("{name}.key")), force)?;
    let ca = Ca::load(dir)?;
    let leaf = ca.issue(&LeafSpec::node(node, days))?;
    Ok(Written {
        files: write_leaf(dir, name, &leaf)?,
    })
}

/// What `liaison certs revoke` did.
#[derive(Debug)]
pub struct Revocation {
    /// The revoked certificate's serial number, hex.
    pub serial: String,
    /// Whether it was already on the list.
    pub already: bool,
    /// How many certificates the list now holds.
    pub listed: usize,
    pub crl: PathBuf,
}

/// `liaison certs revoke`: adds `dir/<name>.crt` to `dir/ca.crl`, a CRL
/// signed by the CA with every earlier entry kept and its number raised. A
/// running broker picks it up (within its poll interval, or at SIGHUP),
/// refuses the certificate at new handshakes and closes its open
/// connections.
///
/// # Errors
/// When the certificate, the CA or an existing list cannot be read, or
/// writing fails.
pub fn revoke(dir: &Path, name: &str) -> Result<Revocation, PkiError> {
    check_name(name)?;
    let ca = Ca::load(dir)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let serial = cert_serial(&cert_path, &read(&cert_path)?)?;
    let crl_path = dir.join(CA_CRL);
    let (mut revoked, number) = if crl_path.exists() {
        read_crl(&crl_path)?
    } else {
        (Vec::new(), 0)
    };
    let now = OffsetDateTime::now_utc();
    let already = revoked.iter().any(|(s, _)| *s == serial);
    if !already {
        revoked.push((serial.clone(), now));
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(365),
        crl_number: rcgen::SerialNumber::from((number + 1).to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, when)| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial.clone()),
                revocation_time: *when,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca.key)?;
    let crl = params.signed_by(&issuer)?;
    // Written beside and renamed, so a broker never reads half a list.
    let tmp = dir.join(format!("{CA_CRL}.new"));
    write_file(&tmp, &crl.pem()?, false)?;
    fs::rename(&tmp, &crl_path).map_err(|source| PkiError::Write {
        path: crl_path.clone(),
        source,
    })?;
    Ok(Revocation {
        serial: hex(&serial),
        already,
        listed: revoked.len(),
        crl: crl_path,
    })
}

/// The serial number of the first certificate of a PEM file.
fn cert_serial(path: &Path, pem: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| invalid("no PEM certificate".into()))?
        .map_err(|e| invalid(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// A CRL's entries: serial number and revocation time.
pub type CrlEntries = Vec<(Vec<u8>, OffsetDateTime)>;

/// The entries and the number of a CRL file.
///
/// # Errors
/// When the file cannot be read or is not a CRL.
pub fn read_crl(path: &Path) -> Result<(CrlEntries, u64), PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        path: path.to_owned(),
        what: "certificate revocation list",
        reason,
    };
    parse_crl(read(path)?.as_bytes()).map_err(invalid)
}

/// The entries (serial, revocation time) and the number of a PEM CRL.
///
/// # Errors
/// Why the text is not a CRL.
pub fn parse_crl(pem: &[u8]) -> Result<(CrlEntries, u64), String> {
    let der = rustls_pemfile::crls(&mut &pem[..])
        .next()
        .ok_or_else(|| "no PEM CRL".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| e.to_string())?;
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            let when = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            (r.raw_serial().to_vec(), when)
        })
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    Ok((entries, number))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `dir/<name>.crt` and `dir/<name>.key` (mode 0600).
///
/// # Errors
/// On any I/O failure.
pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> Result<Vec<PathBuf>, PkiError> {
    check_name(name)?;
    create_dir(dir)?;
    Ok(vec![
        write_file(&dir.join(format!("{name}.crt")), &leaf.cert_pem, false)?,
        write_file(&dir.join(format!("{name}.key")), &leaf.key_pem, true)?,
    ])
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_owned()))
    }
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn refuse_overwrite(path: &Path, force: bool) -> Result<(), PkiError> {
    if !force && path.exists() {
        return Err(PkiError::Exists {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path`; secrets get mode 0600 from creation on (no
/// window in which the key is world-readable).
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<PathBuf, PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    // Remove first so that a replaced key never keeps an older, wider mode.
    if path.exists() {
        fs::remove_file(path).map_err(err)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_and_issue_write_the_documented_layout() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["broker.example".into()], false).unwrap();
        let node: NodeId = "urn:liaison:TJ:border-guard:ishkashim".parse().unwrap();
        issue_node(dir.path(), &node, "ishkashim", 30, false).unwrap();
        for f in [
            "ca.crt",
            "ca.key",
            "broker.crt",
            "broker.key",
            "ishkashim.crt",
            "ishkashim.key",
        ] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
        for key in ["ca.key", "broker.key", "ishkashim.key"] {
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let pem = fs::read(dir.path().join("ishkashim.crt")).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(NodeId::from_certificate(&der).unwrap(), node);
        assert!(matches!(
            init(dir.path(), &[], false),
            Err(PkiError::Exists { .. })
        ));
    }
}
