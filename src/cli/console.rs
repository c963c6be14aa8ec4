//! `liaison console`: the officer's web page on loopback (docs/console.md).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::conn::ConnArgs;
use liaison::console::{self, ConsoleConfig};

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Where the page is served: a loopback address only (the console acts
    /// with the officer's certificate).
    #[arg(long, default_value = "127.0.0.1:7445")]
    pub listen: SocketAddr,
    /// The durable feed the console follows upstream.
    #[arg(long, default_value = "console")]
    pub feed: String,
}

pub async fn run(args: ConsoleArgs) -> Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the console serves loopback only (127.0.0.1 or ::1); it acts with the officer's certificate",
            args.listen
        );
    }
    let config = ConsoleConfig {
        upstream: args.conn.broker.clone(),
        tls: args.conn.tls_files()?,
        feed: args.feed.clone(),
        token: console::login_token(),
        feed_key: console::login_token(),
    };
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "liaison console: open http://{addr}/?token={}",
        config.token
    );
    println!(
        "liaison console: CAP-over-Atom feed for other systems: http://{addr}/feeds/{}.atom?key={}",
        config.feed, config.feed_key
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    console::run(listener, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
