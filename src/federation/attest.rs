//! Proof of origin: the origin broker signs each alert it exports (with its
//! broker certificate's key) over the exact bytes of an
//! [`pb::AttestedAlert`]; every receiving broker checks the signature and
//! the certificate against the origin state's CA before storing, and keeps
//! the attestation, so any later reader can check it again.

use std::sync::Arc;

use prost::Message;
use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::alert::{Record, timestamp};
use crate::identity::{CountryCode, NodeId};
use crate::proto as pb;
use crate::tls::{self, TlsError, TlsFiles};

/// What the signature covers besides the statement: a context, so that
/// the key's signature can never be taken for one made for anything else.
pub const CONTEXT: &[u8] = b"liaison attestation v1\0";

/// The schemes a broker signs with, in order of preference.
const SCHEMES: &[SignatureScheme] = &[
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

    /// Signs `record` as this broker accepted it. Only a broker's own
    /// alerts are signed here; imported ones keep their origin's
    /// attestation.
    ///
    /// # Errors
    /// When the key cannot sign (it is of no scheme we sign with).
    pub fn attest(&self, record: &Record) -> Result<pb::Attestation, String> {
        let statement = pb::AttestedAlert {
            alert: Some(record.alert.body.clone()),
            received_at: Some(timestamp(record.received_at)),
            broker: self.broker.to_string(),
        }
        .encode_to_vec();
        let signer = self
            .key
            .choose_scheme(SCHEMES)
            .ok_or("the broker's key signs with none of Ed25519, ECDSA P-256/P-384, RSA-PSS")?;
        let mut message = Vec::with_capacity(CONTEXT.len() + statement.len());
        message.extend_from_slice(CONTEXT);
        message.extend_from_slice(&statement);
        let signature = signer.sign(&message).map_err(|e| e.to_string())?;
        Ok(pb::Attestation {
            statement,
            signature,
            scheme: scheme_name(signer.scheme()).to_owned(),
            certificates: self.certs.iter().map(|c| c.to_vec()).collect(),
        })
    }
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
    pub chains: ChainCache,
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
            chains: ChainCache::default(),
        }
    }
}

/// How long a verified chain is taken as verified (expiry and the CA's
/// revocation list are checked again after that).
const CHAIN_FRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// Certificates remembered at most.
const CHAIN_CACHE: usize = 8;

/// Recently verified signer certificates (DER of the whole chain). A std
/// mutex: held to look up or insert one entry.
#[derive(Debug, Clone, Default)]
pub struct ChainCache(Arc<std::sync::Mutex<Vec<Verified>>>);

/// A chain (length-prefixed DER) and when it verified.
type Verified = (Vec<u8>, std::time::Instant);

impl ChainCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Verified>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, chain: &[u8]) -> bool {
        self.lock()
            .iter()
            .any(|(c, at)| c.as_slice() == chain && at.elapsed() < CHAIN_FRESH)
    }

    fn remember(&self, chain: Vec<u8>) {
        let mut cache = self.lock();
        cache.retain(|(c, at)| *c != chain && at.elapsed() < CHAIN_FRESH);
        if cache.len() >= CHAIN_CACHE {
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
        trusted.chains.remember(chain);
    }
    let algorithm = algorithm(&att.scheme).ok_or_else(|| Unproven::Scheme(att.scheme.clone()))?;
    let mut message = Vec::with_capacity(CONTEXT.len() + att.statement.len());
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(&att.statement);
    let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| Unproven::Certificate {
        country,
        reason: e.to_string(),
    })?;
    cert.verify_signature(algorithm, &message, &att.signature)
        .map_err(|_| Unproven::BadSignature)?;
    Ok(Attested {
        statement,
        origin,
        signer,
    })
}

fn scheme_name(s: SignatureScheme) -> &'static str {
    match s {
        SignatureScheme::ED25519 => "ED25519",
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ECDSA_NISTP256_SHA256",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ECDSA_NISTP384_SHA384",
        SignatureScheme::RSA_PSS_SHA256 => "RSA_PSS_SHA256",
        _ => "UNKNOWN",
    }
}

fn algorithm(name: &str) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    Some(match name {
        "ED25519" => webpki::ring::ED25519,
        "ECDSA_NISTP256_SHA256" => webpki::ring::ECDSA_P256_SHA256,
        "ECDSA_NISTP384_SHA384" => webpki::ring::ECDSA_P384_SHA384,
        "RSA_PSS_SHA256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return None,
    })
}
