//! How client commands reach a broker: `--broker URL` and the node's
//! certificate, as `--certs D --name N` or explicit `--ca/--cert/--key`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tonic::transport::Channel;

use liaison::client;
use liaison::proto::broker_client::BrokerClient;
use liaison::tls::TlsFiles;

#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Broker (or local agent) address: https://HOST:PORT, or http://127.0.0.1:PORT for a local agent.
    #[arg(long, env = "LIAISON_BROKER", default_value = "https://127.0.0.1:7443")]
    pub broker: String,
    /// PKI directory: --certs D --name N means --ca D/ca.crt --cert D/N.crt --key D/N.key.
    #[arg(long, env = "LIAISON_CERTS")]
    pub certs: Option<PathBuf>,
    /// Node name inside the --certs directory.
    #[arg(long, env = "LIAISON_NAME")]
    pub name: Option<String>,
    /// CA certificate (overrides --certs).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Node certificate (overrides --certs/--name).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Node private key (overrides --certs/--name).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

impl ConnArgs {
    /// The TLS files these flags name; `None` for a plaintext local agent.
    ///
    /// # Errors
    /// When an https:// broker is given without a complete set of files.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>> {
        if self.broker.starts_with("http://") {
            return Ok(None);
        }
        let from_dir = match (&self.certs, &self.name) {
            (Some(dir), Some(name)) => Some(TlsFiles::in_dir(dir, name)),
            _ => None,
        };
        let pick = |explicit: &Option<PathBuf>, from: Option<PathBuf>, flag: &str| match (
            explicit, from,
        ) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(p)) => Ok(p),
            (None, None) => bail!(
                "{flag} is needed for {} (or --certs DIR --name NAME)",
                self.broker
            ),
        };
        Ok(Some(TlsFiles {
            ca: pick(&self.ca, from_dir.as_ref().map(|f| f.ca.clone()), "--ca")?,
            cert: pick(
                &self.cert,
                from_dir.as_ref().map(|f| f.cert.clone()),
                "--cert",
            )?,
            key: pick(&self.key, from_dir.as_ref().map(|f| f.key.clone()), "--key")?,
        }))
    }

    /// Connects to the broker.
    ///
    /// # Errors
    /// When the flags are incomplete or the broker cannot be reached.
    pub async fn connect(&self) -> Result<BrokerClient<Channel>> {
        let files = self.tls_files()?;
        Ok(client::connect(&self.broker, files.as_ref()).await?)
    }
}
