//! Node identity: the typed form of `urn:liaison:<CC>:<agency>:<node>` and its
//! extraction from an X.509 certificate's subject alternative names.
//!
//! The identity of a caller comes from its client certificate only; this module
//! is the one place that turns certificate bytes into a [`NodeId`].

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// URN prefix of every liaison identity.
pub const URN_PREFIX: &str = "urn:liaison:";

/// Why a string or a certificate does not name a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("`{urn}` is not a liaison identity: {reason}")]
    BadUrn { urn: String, reason: &'static str },
    #[error("the certificate carries no `urn:liaison:` URI in its subject alternative names")]
    NoLiaisonUri,
    #[error("the certificate carries {count} `urn:liaison:` URIs; exactly one is required")]
    SeveralLiaisonUris { count: usize },
    #[error("the certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("no client certificate was presented")]
    NoCertificate,
}

/// ISO 3166-1 alpha-2 country code, upper case (`TJ`, `AF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Parses a two-letter upper-case code.
    ///
    /// # Errors
    /// Returns the rule broken when `s` is not two ASCII upper-case letters.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(Self([*a, *b])),
            _ => Err("a country is an ISO 3166-1 alpha-2 code: two upper-case letters"),
        }
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `s` is a valid agency or node label: `[a-z0-9-]{1,63}`.
pub fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One certified participant: `urn:liaison:<CC>:<agency>:<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    country: CountryCode,
    agency: String,
    node: String,
}

impl NodeId {
    /// Builds an identity from its parts.
    ///
    /// # Errors
    /// [`IdentityError::BadUrn`] when a part breaks its rule.
    pub fn new(country: &str, agency: &str, node: &str) -> Result<Self, IdentityError> {
        format!("{URN_PREFIX}{country}:{agency}:{node}").parse()
    }

    pub fn country(&self) -> CountryCode {
        self.country
    }

    pub fn agency(&self) -> &str {
        &self.agency
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether `other` belongs to the same agency of the same country.
    pub fn same_agency(&self, other: &NodeId) -> bool {
        self.country == other.country && self.agency == other.agency
    }

    /// Reads the identity from a DER-encoded certificate: exactly one SAN URI
    /// starting with `urn:liaison:` must be present, and it must be valid.
    ///
    /// # Errors
    /// Names what is wrong with the certificate.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(URN_PREFIX) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoLiaisonUri),
            [uri] => uri.parse(),
            more => Err(IdentityError::SeveralLiaisonUris { count: more.len() }),
        }
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(urn: &str) -> Result<Self, Self::Err> {
        let bad = |reason| IdentityError::BadUrn {
            urn: urn.chars().take(200).collect(),
            reason,
        };
        let rest = urn
            .strip_prefix(URN_PREFIX)
            .ok_or_else(|| bad("it must start with `urn:liaison:`"))?;
        let mut parts = rest.split(':');
        let (Some(cc), Some(agency), Some(node), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "it must have the form urn:liaison:<CC>:<agency>:<node>",
            ));
        };
        let country = CountryCode::parse(cc).map_err(bad)?;
        if !is_label(agency) {
            return Err(bad("the agency must match [a-z0-9-]{1,63}"));
        }
        if !is_label(node) {
            return Err(bad("the node must match [a-z0-9-]{1,63}"));
        }
        Ok(Self {
            country,
            agency: agency.to_owned(),
            node: node.to_owned(),
        })
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{URN_PREFIX}{}:{}:{}",
            self.country, self.agency, self.node
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: NodeId = "urn:liaison:TJ:border-guard:ishkashim".parse().unwrap();
        assert_eq!(id.country().as_str(), "TJ");
        assert_eq!(id.agency(), "border-guard");
        assert_eq!(id.node(), "ishkashim");
        assert_eq!(id.to_string(), "urn:liaison:TJ:border-guard:ishkashim");
    }

    #[test]
    fn rejects_malformed_urns() {
        for bad in [
            "",
            "urn:liaison:",
            "urn:liaison:tj:border-guard:x",
            "urn:liaison:TJK:border-guard:x",
            "urn:liaison:TJ:Border:x",
            "urn:liaison:TJ:border guard:x",
            "urn:liaison:TJ:border-guard:",
            "urn:liaison:TJ:border-guard:x:y",
            "urn:other:TJ:a:b",
            &format!("urn:liaison:TJ:a:{}", "n".repeat(64)),
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad} should be refused");
        }
    }
}
