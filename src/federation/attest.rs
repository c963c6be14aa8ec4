//! Proof of origin: the origin broker signs each alert it exports (with its
//! broker certificate's key) over the exact bytes of an
//! [`pb::AttestedAlert`]; every receiving broker checks the signature and
//! the certificate against the origin state's CA before storing, and keeps
//! the attestation, so any later reader can check it again.
//!
//! What a link exports is signed in batches: one signature over the root of
//! a Merkle tree (RFC 9162 §2.1, SHA-256) of the batch's statements, and
//! each alert's attestation carries that root, the signature and the
//! inclusion proof of its own statement ([`pb::SignedBatch`]). Each
//! attestation still proves its one alert on its own; a receiver checks a
//! batch's signature once and each statement's proof (a few hashes).

use std::sync::Arc;

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{InclusionProof, RootHash};
use prost::Message;
use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use sha2::Sha256;

use crate::alert::{Record, timestamp};
use crate::identity::{CountryCode, NodeId};
use crate::proto as pb;
use crate::tls::{self, TlsError, TlsFiles};

/// What the signature covers besides the statement: a context, so that
/// the key's signature can never be taken for one made for anything else.
pub const CONTEXT: &[u8] = b"liaison attestation v1\0";
/// What a batch signature covers besides the batch's size and root.
pub const BATCH_CONTEXT: &[u8] = b"liaison attestation batch v1\0";
/// Statements one signature covers at most (a verifier refuses larger
/// batches).
pub const MAX_BATCH: usize = 4096;
/// A SHA-256 hash's length.
const HASH: usize = 32;

/// The schemes a broker signs with, in order of preference.
pub(crate) const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Why an attestation does not prove an alert's origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unproven {
    #[error("attestation: no certificate of the signing broker")]
    NoCertificate,
    #[error("attestation: the signer's certificate names no liaison identity: {0}")]
    NoIdentity(String),
    #[error("attestation: the statement does not decode: {0}")]
    Undecodable(String),
    #[error("attestation: signed by {signer}, but the statement names {claimed}")]
    WrongBroker { signer: String, claimed: String },
    #[error(
        "attestation: no CA is trusted for origin country {0} (its broker's CA belongs in a [[peer]] or [[origin]] entry)"
    )]
    UnknownCountry(CountryCode),
    #[error("attestation: {signer} is not the broker trusted for {country}")]
    NotItsBroker {
        signer: String,
        country: CountryCode,
    },
    #[error("attestation: the signer's certificate is not valid under {country}'s CA: {reason}")]
    Certificate {
        country: CountryCode,
        reason: String,
    },
    #[error("attestation: unknown signature scheme `{0}`")]
    Scheme(String),
    #[error("attestation: the signature does not match the statement (a changed byte?)")]
    BadSignature,
    #[error("attestation.batch: {0}")]
    Batch(&'static str),
    #[error(
        "attestation.batch: the statement is not the one the batch signed at its index (a changed byte?)"
    )]
    NotInBatch,
    #[error("attestation: the alert names no valid origin: {0}")]
    Origin(String),
}

/// Signs what this broker exports.
pub struct Signer {
    key: Arc<dyn rustls::sign::SigningKey>,
    certs: Vec<CertificateDer<'static>>,
    broker: NodeId,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Signer")
            .field("broker", &self.broker)
            .finish()
    }
}

impl Signer {
    /// The broker's own certificate and key.
    ///
    /// # Errors
    /// When the files cannot be read, the key is of no supported type, or
    /// the certificate carries no liaison identity (create the PKI with
    /// `liaison certs init --country CC`).
    pub fn load(files: &TlsFiles) -> Result<Signer, TlsError> {
        let certs = tls::load_certs(&files.cert)?;
        let key = tls::load_key(&files.key)?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            TlsError::Invalid {
                path: files.key.clone(),
                reason: e.to_string(),
            }
        })?;
        let broker = NodeId::from_certificate(&certs[0]).map_err(|e| TlsError::Invalid {
            path: files.cert.clone(),
            reason: format!(
                "{e}; a broker on federation links needs its identity in its certificate \
                 (liaison certs init --country CC)"
            ),
        })?;
        Ok(Signer { key, certs, broker })
    }

    /// This broker's identity.
    pub fn broker(&self) -> &NodeId {
        &self.broker
    }

    /// Signs `record` as this broker accepted it (a batch of one).
    ///
    /// # Errors
    /// As [`Signer::attest_batch`].
    pub fn attest(&self, record: &Record) -> Result<pb::Attestation, String> {
        let mut one = self.attest_batch(&[record])?;
        one.pop().ok_or_else(|| "no attestation made".into())
    }

    /// Signs `records` as this broker accepted them, with one signature
    /// over the batch; one attestation per record, in order. Only a
    /// broker's own alerts are signed here; imported ones keep their
    /// origin's attestation.
    ///
    /// # Errors
    /// When the key cannot sign (it is of no scheme we sign with), or the
    /// batch is larger than [`MAX_BATCH`].
    pub fn attest_batch(&self, records: &[&Record]) -> Result<Vec<pb::Attestation>, String> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if records.len() > MAX_BATCH {
            return Err(format!(
                "a batch of at most {MAX_BATCH} statements is signed"
            ));
        }
        let statements: Vec<Vec<u8>> = records.iter().map(|r| self.statement(r)).collect();
        let (root, proofs) = {
            let mut tree = MemoryBackedTree::<Sha256, &[u8]>::new();
            for s in &statements {
                tree.push(s.as_slice());
            }
            let proofs: Vec<Vec<u8>> = (0..statements.len())
                .map(|i| tree.prove_inclusion(i).as_bytes().to_vec())
                .collect();
            (tree.root().as_bytes().to_vec(), proofs)
        };
        let size = statements.len() as u64;
        let signer = self
            .key
            .choose_scheme(SCHEMES)
            .ok_or("the broker's key signs with none of Ed25519, ECDSA P-256/P-384, RSA-PSS")?;
        let signature = signer
            .sign(&batch_message(size, &root))
            .map_err(|e| e.to_string())?;
        let scheme = scheme_name(signer.scheme());
        let certificates: Vec<Vec<u8>> = self.certs.iter().map(|c| c.to_vec()).collect();
        Ok(statements
            .into_iter()
            .zip(proofs)
            .enumerate()
            .map(|(index, (statement, proof))| pb::Attestation {
                statement,
                signature: signature.clone(),
                scheme: scheme.to_owned(),
                certificates: certificates.clone(),
                batch: Some(pb::SignedBatch {
                    root: root.clone(),
                    size,
                    index: index as u64,
                    proof,
                }),
            })
            .collect())
    }

    /// The statement this broker signs for `record`.
    fn statement(&self, record: &Record) -> Vec<u8> {
        pb::AttestedAlert {
            alert: Some(record.alert.body.clone()),
            received_at: Some(timestamp(record.received_at)),
            broker: self.broker.to_string(),
        }
        .encode_to_vec()
    }
}

/// What a batch's signature covers.
fn batch_message(size: u64, root: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(BATCH_CONTEXT.len() + 8 + root.len());
    message.extend_from_slice(BATCH_CONTEXT);
    message.extend_from_slice(&size.to_be_bytes());
    message.extend_from_slice(root);
    message
}

/// Checks that `statement` is leaf `batch.index` of the tree whose root
/// `batch` names; the message the signature must cover.
fn in_batch(statement: &[u8], batch: &pb::SignedBatch) -> Result<Vec<u8>, Unproven> {
    if batch.size == 0 || batch.size > MAX_BATCH as u64 {
        return Err(Unproven::Batch("size: must be 1 to 4096"));
    }
    if batch.index >= batch.size {
        return Err(Unproven::Batch("index: must be below size"));
    }
    if batch.root.len() != HASH {
        return Err(Unproven::Batch("root: must be 32 bytes"));
    }
    // At most one hash per level of a tree of MAX_BATCH leaves.
    if !batch.proof.len().is_multiple_of(HASH) || batch.proof.len() > HASH * 12 {
        return Err(Unproven::Batch(
            "proof: must be 32-byte hashes, one per level",
        ));
    }
    let digest = ct_merkle::digest::Output::<Sha256>::clone_from_slice(&batch.root);
    let root = RootHash::<Sha256>::new(digest, batch.size);
    let proof = InclusionProof::<Sha256>::try_from_bytes(batch.proof.clone())
        .map_err(|_| Unproven::Batch("proof: must be 32-byte hashes, one per level"))?;
    root.verify_inclusion(&statement, batch.index, &proof)
        .map_err(|_| Unproven::NotInBatch)?;
    Ok(batch_message(batch.size, &batch.root))
}

/// Whose signatures prove the origin of one country's alerts.
#[derive(Debug, Clone)]
pub struct Origin {
    pub country: CountryCode,
    /// The broker that signs that country's alerts.
    pub broker: NodeId,
    /// Its state's CA.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// Signer certificates whose chain verified lately, and when: a link
    /// carries the same certificate on every alert, and checking its chain
    /// costs a signature verification of its own.
    pub chains: Recent,
    /// Batch signatures that verified lately (chain, scheme, signature and
    /// the signed message): every alert of a batch carries the same one.
    pub batches: Recent,
}

impl Origin {
    pub fn new(
        country: CountryCode,
        broker: NodeId,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Self {
        Origin {
            country,
            broker,
            verifier,
            chains: Recent::default(),
            batches: Recent::default(),
        }
    }
}

/// How long a verified chain or batch signature is taken as verified
/// (expiry and the CA's revocation list are checked again after that).
const FRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// Entries remembered at most.
const REMEMBERED: usize = 8;

/// Recently verified byte strings (a whole certificate chain, or a batch
/// signature with what it signed). A std mutex: held to look up or insert
/// one entry.
#[derive(Debug, Clone, Default)]
pub struct Recent(Arc<std::sync::Mutex<Vec<Verified>>>);

/// What verified, and when.
type Verified = (Vec<u8>, std::time::Instant);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Verified>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, chain: &[u8]) -> bool {
        self.lock()
            .iter()
            .any(|(c, at)| c.as_slice() == chain && at.elapsed() < FRESH)
    }

    fn remember(&self, chain: Vec<u8>) {
        let mut cache = self.lock();
        cache.retain(|(c, at)| *c != chain && at.elapsed() < FRESH);
        if cache.len() >= REMEMBERED {
            cache.remove(0);
        }
        cache.push((chain, std::time::Instant::now()));
    }
}

/// An attestation that verified: the alert exactly as its origin broker
/// accepted it.
#[derive(Debug, Clone)]
pub struct Attested {
    pub statement: pb::AttestedAlert,
    pub origin: NodeId,
    pub signer: NodeId,
}

/// Checks `att` against the trusted origins: the signer's certificate is
/// valid under its country's CA and is that country's broker, the
/// signature matches, and the alert's origin is of that country.
///
/// # Errors
/// What does not hold.
pub fn verify(att: &pb::Attestation, origins: &[Origin]) -> Result<Attested, Unproven> {
    let statement = pb::AttestedAlert::decode(att.statement.as_slice())
        .map_err(|e| Unproven::Undecodable(e.to_string()))?;
    let origin: NodeId = statement
        .alert
        .as_ref()
        .and_then(|a| a.origin.as_ref())
        .map(|o| o.urn.as_str())
        .unwrap_or_default()
        .parse()
        .map_err(|e: crate::identity::IdentityError| Unproven::Origin(e.to_string()))?;
    let country = origin.country();
    let leaf = att.certificates.first().ok_or(Unproven::NoCertificate)?;
    let signer = NodeId::from_certificate(leaf).map_err(|e| Unproven::NoIdentity(e.to_string()))?;
    if statement.broker != signer.to_string() {
        return Err(Unproven::WrongBroker {
            signer: signer.to_string(),
            claimed: statement.broker.clone(),
        });
    }
    let trusted = origins
        .iter()
        .find(|o| o.country == country)
        .ok_or(Unproven::UnknownCountry(country))?;
    if trusted.broker != signer {
        return Err(Unproven::NotItsBroker {
            signer: signer.to_string(),
            country,
        });
    }
    let leaf = CertificateDer::from(leaf.as_slice());
    let intermediates: Vec<CertificateDer<'_>> = att.certificates[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    // Length-prefixed, so that no other split of the same bytes matches.
    let chain: Vec<u8> = att
        .certificates
        .iter()
        .flat_map(|c| {
            (c.len() as u64)
                .to_be_bytes()
                .into_iter()
                .chain(c.iter().copied())
        })
        .collect();
    if !trusted.chains.fresh(&chain) {
        trusted
            .verifier
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
            .map_err(|e| Unproven::Certificate {
                country,
                reason: e.to_string(),
            })?;
        trusted.chains.remember(chain.clone());
    }
    let algorithm = algorithm(&att.scheme).ok_or_else(|| Unproven::Scheme(att.scheme.clone()))?;
    let signed = match &att.batch {
        Some(batch) => {
            let message = in_batch(&att.statement, batch)?;
            // The batch's signature, remembered with everything it binds.
            let mut key = chain;
            key.extend_from_slice(att.scheme.as_bytes());
            key.push(0);
            key.extend_from_slice(&(att.signature.len() as u64).to_be_bytes());
            key.extend_from_slice(&att.signature);
            key.extend_from_slice(&message);
            Some((message, key))
        }
        None => None,
    };
    if let Some((_, key)) = &signed
        && trusted.batches.fresh(key)
    {
        return Ok(Attested {
            statement,
            origin,
            signer,
        });
    }
    let message = match &signed {
        Some((message, _)) => message.clone(),
        None => [CONTEXT, att.statement.as_slice()].concat(),
    };
    let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| Unproven::Certificate {
        country,
        reason: e.to_string(),
    })?;
    cert.verify_signature(algorithm, &message, &att.signature)
        .map_err(|_| Unproven::BadSignature)?;
    if let Some((_, key)) = signed {
        trusted.batches.remember(key);
    }
    Ok(Attested {
        statement,
        origin,
        signer,
    })
}

pub(crate) fn scheme_name(s: SignatureScheme) -> &'static str {
    match s {
        SignatureScheme::ED25519 => "ED25519",
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ECDSA_NISTP256_SHA256",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ECDSA_NISTP384_SHA384",
        SignatureScheme::RSA_PSS_SHA256 => "RSA_PSS_SHA256",
        _ => "UNKNOWN",
    }
}

pub(crate) fn algorithm(
    name: &str,
) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    Some(match name {
        "ED25519" => webpki::ring::ED25519,
        "ECDSA_NISTP256_SHA256" => webpki::ring::ECDSA_P256_SHA256,
        "ECDSA_NISTP384_SHA384" => webpki::ring::ECDSA_P384_SHA384,
        "RSA_PSS_SHA256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return None,
    })
}
