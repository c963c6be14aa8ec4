//! Connecting to a broker (or a local agent) as a node: mutual TLS with the
//! node's certificate for `https://` addresses, plaintext for `http://`
//! (a local agent on loopback).

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::broker_client::BrokerClient;
use crate::tls::TlsFiles;

/// Largest response a client accepts (an alert is at most a few hundred KiB).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a broker address: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "https:// needs a CA, a certificate and a key (--certs DIR --name NAME, or --ca/--cert/--key)"
    )]
    NoCertificates,
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A configured but not yet connected endpoint.
///
/// # Errors
/// When the URL is malformed, or TLS files are missing for `https://`.
pub fn endpoint(url: &str, tls: Option<&TlsFiles>) -> Result<Endpoint, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let files = tls.ok_or(ClientError::NoCertificates)?;
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&files.ca)?))
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
        ep = ep.tls_config(config).map_err(|e| bad(e.to_string()))?;
    } else if !url.starts_with("http://") {
        return Err(bad(
            "it must start with https:// (or http:// for a local agent)".into(),
        ));
    }
    Ok(ep)
}

/// Connects and returns a client of the Broker service.
///
/// # Errors
/// As [`endpoint`], and when the connection cannot be established.
pub async fn connect(
    url: &str,
    tls: Option<&TlsFiles>,
) -> Result<BrokerClient<Channel>, ClientError> {
    let channel = endpoint(url, tls)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(BrokerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}
