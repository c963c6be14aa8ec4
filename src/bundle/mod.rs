//! Offline bundles (docs/bundles.md): alerts carried on removable media
//! between a post with no link and its national broker, and the signed
//! receipts that come back.
//!
//! A bundle is signed by its sender's certificate key, then encrypted to
//! its recipient's certificate key with HPKE (RFC 9180, base mode,
//! DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM; the `hpke` crate):
//! nobody but the recipient reads it, the recipient knows who wrote it
//! (the signer's chain is checked against the recipient's own CA and
//! revocation list), and the signed body names the recipient, so a bundle
//! decrypted by one broker cannot be passed on to another as if it were
//! addressed there. The file format is in `proto/liaison/v1/bundle.proto`.
//!
//! [`post`] holds the post's side (on its agent's store, the agent
//! stopped), [`centre`] the national broker's (behind the Admin RPCs).

pub mod centre;
pub mod post;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use prost::Message;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::alert::{system_time, timestamp};
use crate::broker::BrokerError;
use crate::federation::attest;
use crate::identity::NodeId;
use crate::proto as pb;
use crate::store::StoreError;
use crate::tls::{self, TlsFiles};

type Kem = hpke::kem::DhP256HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

/// The first bytes of every bundle file.
pub const MAGIC: &[u8; 8] = b"LIAISONB";
/// The format the header names.
pub const FORMAT: &str = "liaison-bundle-1";
/// HPKE's info string.
const INFO: &[u8] = b"liaison bundle v1";
/// What the signature covers before the body: a context, so that the
/// key's signature can never be taken for one made for anything else.
const CONTEXT: &[u8] = b"liaison bundle v1\0";
/// Largest bundle file read.
pub const MAX_FILE_BYTES: usize = 64 << 20;
/// Export limits when none are given.
pub const DEFAULT_MAX_ALERTS: usize = 10_000;
pub const DEFAULT_MAX_BYTES: u64 = 32 << 20;

/// Why a bundle is refused, or cannot be made. Nothing of a refused bundle
/// is stored.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Keys(String),
    #[error(
        "not a liaison bundle (it does not start with {})",
        String::from_utf8_lossy(MAGIC)
    )]
    NotABundle,
    #[error("the bundle is {0} bytes; bundles of at most 64 MiB are read")]
    TooLarge(usize),
    #[error("the bundle is damaged or truncated: {0}")]
    Damaged(String),
    #[error("the bundle is of format `{0}`; this version reads {FORMAT}")]
    Format(String),
    #[error(
        "the bundle is addressed to {0}, not to this node (it is encrypted to another certificate's key)"
    )]
    NotForUs(String),
    #[error(
        "the bundle does not decrypt with this node's key: a byte was changed or cut on the way"
    )]
    Undecryptable,
    #[error("the bundle's signer is not trusted here: {0}")]
    Signer(String),
    #[error("the bundle's signature does not match its content (a changed byte?)")]
    BadSignature,
    #[error("the bundle says it is from `{claimed}`, but {signer} signed it")]
    Forged { claimed: String, signer: String },
    #[error("the bundle is addressed to `{0}`, not to this node")]
    WrongRecipient(String),
    #[error(
        "bundle {id} ({kind}, from {from}) was taken in here already; a bundle is taken in once"
    )]
    Replayed {
        id: String,
        kind: String,
        from: String,
    },
    #[error("the bundle holds {found}; `{command}` takes {expected}")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
        command: &'static str,
    },
    #[error("{0}")]
    Refused(String),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

impl BundleError {
    fn keys(what: impl std::fmt::Display) -> BundleError {
        BundleError::Keys(what.to_string())
    }
}

/// What a bundle carries.
pub fn kind_of(body: &pb::BundleBody) -> &'static str {
    match &body.content {
        Some(pb::bundle_body::Content::Outbox(_)) => "a post's alerts (outbox)",
        Some(pb::bundle_body::Content::Inbox(_)) => "alerts for a post (inbox)",
        Some(pb::bundle_body::Content::Receipt(_)) => "a receipt",
        None => "nothing",
    }
}

/// Short name of a bundle's kind (kept with the ids of imported bundles).
fn kind_label(body: &pb::BundleBody) -> &'static str {
    match &body.content {
        Some(pb::bundle_body::Content::Outbox(_)) => "outbox",
        Some(pb::bundle_body::Content::Inbox(_)) => "inbox",
        Some(pb::bundle_body::Content::Receipt(_)) => "receipt",
        None => "empty",
    }
}

/// A certificate a bundle is encrypted to (or whose key signed one).
#[derive(Clone)]
pub struct Peer {
    /// The liaison identity the certificate carries (a development broker
    /// certificate may carry none).
    pub identity: Option<NodeId>,
    /// SHA-256 of its SubjectPublicKeyInfo.
    pub key_sha256: [u8; 32],
    public: Option<<Kem as hpke::Kem>::PublicKey>,
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Peer {
    /// The peer of a certificate chain (leaf first).
    ///
    /// # Errors
    /// When the leaf does not parse.
    pub fn from_chain(chain: Vec<CertificateDer<'static>>) -> Result<Peer, BundleError> {
        let leaf = chain
            .first()
            .ok_or_else(|| BundleError::keys("no certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| BundleError::keys(format!("the certificate does not parse: {e}")))?;
        let spki = cert.tbs_certificate.subject_pki.raw;
        let key_sha256: [u8; 32] = Sha256::digest(spki).into();
        let point = cert
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref();
        let public = <Kem as hpke::Kem>::PublicKey::from_bytes(point).ok();
        let identity = NodeId::from_certificate(leaf).ok();
        Ok(Peer {
            identity,
            key_sha256,
            public,
            chain,
        })
    }

    /// The certificate in a PEM file (its first one, with the rest as its
    /// chain).
    ///
    /// # Errors
    /// When the file cannot be read or holds no certificate.
    pub fn load(path: &Path) -> Result<Peer, BundleError> {
        let chain = tls::load_certs(path).map_err(BundleError::keys)?;
        Peer::from_chain(chain).map_err(|e| BundleError::keys(format!("{}: {e}", path.display())))
    }

    /// A certificate given as PEM or DER bytes.
    ///
    /// # Errors
    /// When the bytes hold no certificate.
    pub fn parse(bytes: &[u8]) -> Result<Peer, BundleError> {
        let pem: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &bytes[..])
            .filter_map(Result::ok)
            .collect();
        if pem.is_empty() {
            Peer::from_chain(vec![CertificateDer::from(bytes.to_vec())])
        } else {
            Peer::from_chain(pem)
        }
    }

    /// Its identity, or its key's fingerprint when it carries none.
    pub fn name(&self) -> String {
        match &self.identity {
            Some(id) => id.to_string(),
            None => format!("key sha256:{}", &crate::pki::hex(&self.key_sha256)[..16]),
        }
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// A body's `to` field for this recipient.
    fn urn(&self) -> String {
        self.identity
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// This node's side: its certificate and key (to sign what it sends and
/// open what it receives) and its CA and revocation list (to check who
/// signed what it receives).
pub struct Party {
    me: Peer,
    signing: Arc<dyn rustls::sign::SigningKey>,
    secret: <Kem as hpke::Kem>::PrivateKey,
    trust: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Party").field("me", &self.me).finish()
    }
}

/// A bundle opened and checked.
#[derive(Debug)]
pub struct Opened {
    pub id: uuid::Uuid,
    /// Who signed it (its chain was valid under this node's CA).
    pub signer: Peer,
    pub created: SystemTime,
    pub body: pb::BundleBody,
}

impl Party {
    /// Reads this node's certificate, key, CA and (when `ca.crl` is beside
    /// the CA) revocation list.
    ///
    /// # Errors
    /// When a file cannot be read, or the key is not a P-256 key (what
    /// `liaison certs` makes; HPKE here decrypts with P-256 only).
    pub fn load(files: &TlsFiles) -> Result<Party, BundleError> {
        let chain = tls::load_certs(&files.cert).map_err(BundleError::keys)?;
        let me = Peer::from_chain(chain)
            .map_err(|e| BundleError::keys(format!("{}: {e}", files.cert.display())))?;
        let key = tls::load_key(&files.key).map_err(BundleError::keys)?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| BundleError::keys(format!("{}: {e}", files.key.display())))?;
        let secret = hpke_secret(&key).map_err(|e| {
            BundleError::keys(format!(
                "{}: {e}; offline bundles need a P-256 key (as `liaison certs` makes)",
                files.key.display()
            ))
        })?;
        let crl = tls::crl_path(files);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let trust = tls::ca_verifier(&files.ca, crl.exists().then_some(crl.as_path()), &provider)
            .map_err(BundleError::keys)?;
        Ok(Party {
            me,
            signing,
            secret,
            trust,
        })
    }

    /// This node's certificate.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// Checks that `peer`'s chain is valid under this node's CA and not
    /// revoked.
    ///
    /// # Errors
    /// What does not hold.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        let (leaf, rest) = peer.chain.split_first().ok_or("no certificate")?;
        self.trust
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map(drop)
            .map_err(|e| format!("{}: {e}", peer.name()))
    }

    /// Signs `content` as a bundle to `to` and encrypts it to `to`'s key:
    /// the bytes of a bundle file, and the bundle's id.
    ///
    /// # Errors
    /// When `to`'s key is not a P-256 key, or this node's key cannot sign.
    pub fn seal(
        &self,
        to: &Peer,
        content: pb::bundle_body::Content,
    ) -> Result<(uuid::Uuid, Vec<u8>), BundleError> {
        let public = to.public.as_ref().ok_or_else(|| {
            BundleError::keys(format!(
                "{}: the certificate's key is not a P-256 key; offline bundles are encrypted to P-256 keys (as `liaison certs` makes)",
                to.name()
            ))
        })?;
        let id = uuid::Uuid::now_v7();
        let body = pb::BundleBody {
            id: id.to_string(),
            from: self.me.urn(),
            to: to.urn(),
            created: Some(timestamp(SystemTime::now())),
            to_key_sha256: to.key_sha256.to_vec(),
            content: Some(content),
        }
        .encode_to_vec();
        let signer = self.signing.choose_scheme(attest::SCHEMES).ok_or_else(|| {
            BundleError::keys(
                "this node's key signs with none of Ed25519, ECDSA P-256/P-384, RSA-PSS",
            )
        })?;
        let signature = signer
            .sign(&[CONTEXT, body.as_slice()].concat())
            .map_err(BundleError::keys)?;
        let signed = pb::SignedBundle {
            body,
            scheme: attest::scheme_name(signer.scheme()).to_owned(),
            signature,
            certificates: self.me.chain.iter().map(|c| c.to_vec()).collect(),
        }
        .encode_to_vec();
        let header = pb::BundleHeader {
            format: FORMAT.into(),
            recipient: to.name(),
            recipient_key_sha256: to.key_sha256.to_vec(),
        }
        .encode_to_vec();
        let (enc, mut context) = hpke::setup_sender::<Aead, Kdf, Kem>(&OpModeS::Base, public, INFO)
            .map_err(|e| BundleError::keys(format!("HPKE: {e}")))?;
        let ciphertext = context
            .seal(&signed, &header)
            .map_err(|e| BundleError::keys(format!("HPKE: {e}")))?;
        let envelope = pb::BundleEnvelope {
            header,
            enc: enc.to_bytes().to_vec(),
            ciphertext,
        };
        let mut file = Vec::with_capacity(MAGIC.len() + envelope.encoded_len());
        file.extend_from_slice(MAGIC);
        envelope
            .encode(&mut file)
            .map_err(|e| BundleError::keys(e.to_string()))?;
        Ok((id, file))
    }

    /// Decrypts and checks a bundle file: addressed to this node (by key
    /// and, in the signed body, by identity), signed by a certificate valid
    /// under this node's CA and not revoked, with a signature that matches,
    /// and from whom it says.
    ///
    /// # Errors
    /// The first check that fails; see [`BundleError`].
    pub fn open(&self, file: &[u8]) -> Result<Opened, BundleError> {
        if file.len() > MAX_FILE_BYTES {
            return Err(BundleError::TooLarge(file.len()));
        }
        let rest = file.strip_prefix(MAGIC).ok_or(BundleError::NotABundle)?;
        let damaged = |what: &str, e: &dyn std::fmt::Display| {
            BundleError::Damaged(format!("{what} does not decode ({e})"))
        };
        let envelope = pb::BundleEnvelope::decode(rest).map_err(|e| damaged("the envelope", &e))?;
        let header = pb::BundleHeader::decode(envelope.header.as_slice())
            .map_err(|e| damaged("the header", &e))?;
        if header.format != FORMAT {
            return Err(BundleError::Format(header.format));
        }
        if header.recipient_key_sha256 != self.me.key_sha256 {
            return Err(BundleError::NotForUs(header.recipient));
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&envelope.enc)
            .map_err(|_| BundleError::Undecryptable)?;
        let mut context =
            hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, INFO)
                .map_err(|_| BundleError::Undecryptable)?;
        let plain = Zeroizing::new(
            context
                .open(&envelope.ciphertext, &envelope.header)
                .map_err(|_| BundleError::Undecryptable)?,
        );
        let signed =
            pb::SignedBundle::decode(plain.as_slice()).map_err(|e| damaged("the content", &e))?;
        let chain: Vec<CertificateDer<'static>> = signed
            .certificates
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let signer = Peer::from_chain(chain).map_err(|e| BundleError::Signer(e.to_string()))?;
        self.check(&signer).map_err(BundleError::Signer)?;
        let algorithm = attest::algorithm(&signed.scheme).ok_or_else(|| {
            BundleError::Signer(format!("unknown signature scheme `{}`", signed.scheme))
        })?;
        let leaf = CertificateDer::from(signer.leaf());
        let cert = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| BundleError::Signer(e.to_string()))?;
        cert.verify_signature(
            algorithm,
            &[CONTEXT, signed.body.as_slice()].concat(),
            &signed.signature,
        )
        .map_err(|_| BundleError::BadSignature)?;
        let body =
            pb::BundleBody::decode(signed.body.as_slice()).map_err(|e| damaged("the body", &e))?;
        if body.from != signer.urn() {
            return Err(BundleError::Forged {
                claimed: body.from,
                signer: signer.name(),
            });
        }
        if body.to_key_sha256 != self.me.key_sha256 || body.to != self.me.urn() {
            return Err(BundleError::WrongRecipient(if body.to.is_empty() {
                "another key".into()
            } else {
                body.to
            }));
        }
        let id: uuid::Uuid = body.id.parse().map_err(|e| damaged("the bundle id", &e))?;
        let created =
            body.created.as_ref().and_then(system_time).ok_or_else(|| {
                BundleError::Damaged("the bundle has no valid creation time".into())
            })?;
        Ok(Opened {
            id,
            signer,
            created,
            body,
        })
    }
}

/// The HPKE private key of a P-256 certificate key.
fn hpke_secret(key: &PrivateKeyDer<'_>) -> Result<<Kem as hpke::Kem>::PrivateKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = match key {
        PrivateKeyDer::Pkcs8(der) => p256::SecretKey::from_pkcs8_der(der.secret_pkcs8_der())
            .map_err(|e| format!("not a P-256 key ({e})"))?,
        _ => return Err("not a PKCS#8 key".into()),
    };
    let bytes = Zeroizing::new(secret.to_bytes());
    <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes.as_slice()).map_err(|e| e.to_string())
}

/// Refuses a bundle that was imported already.
fn refuse_replay(store: &crate::store::Store, opened: &Opened) -> Result<(), BundleError> {
    if let Some(seen) = store.bundle_seen(&opened.id)? {
        return Err(BundleError::Replayed {
            id: opened.id.to_string(),
            kind: seen.kind,
            from: seen.from,
        });
    }
    Ok(())
}

/// Reads a bundle file (at most [`MAX_FILE_BYTES`]).
///
/// # Errors
/// When it cannot be read or is larger.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BundleError> {
    let len = std::fs::metadata(path)
        .map_err(|e| BundleError::keys(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_FILE_BYTES as u64 {
        return Err(BundleError::TooLarge(
            usize::try_from(len).unwrap_or(usize::MAX),
        ));
    }
    std::fs::read(path).map_err(|e| BundleError::keys(format!("{}: {e}", path.display())))
}

/// Writes a bundle file whole or not at all (a temporary file beside it,
/// synced, then renamed), so a full medium or a pulled stick never leaves
/// a half bundle under the name.
///
/// # Errors
/// When the file cannot be written.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.partial"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Counts of one import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub stored: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub retry: u64,
}

impl Counts {
    fn add(&mut self, outcome: pb::bundle_item::Outcome) {
        use pb::bundle_item::Outcome as O;
        match outcome {
            O::Stored => self.stored += 1,
            O::Duplicate => self.duplicates += 1,
            O::Refused => self.refused += 1,
            O::Retry | O::Unspecified => self.retry += 1,
        }
    }

    fn of(items: &[pb::BundleItem]) -> Counts {
        let mut counts = Counts::default();
        for item in items {
            counts.add(item.outcome());
        }
        counts
    }

    fn remembered(self, from: &Peer, kind: &str) -> crate::store::StoredBundle {
        crate::store::StoredBundle {
            from: from.name(),
            kind: kind.to_owned(),
            at_us: crate::alert::micros(SystemTime::now()),
            stored: self.stored,
            duplicates: self.duplicates,
            refused: self.refused,
            retry: self.retry,
        }
    }
}
