//! A scripted Anthropic Messages API for running the real Claude Code CLI offline.
//!
//! It speaks the API as the CLI sees it (`POST /v1/messages`, SSE streaming with
//! `message_start`, `content_block_start/delta/stop` for text and tool-use JSON,
//! `message_delta` with `stop_reason` and usage, `message_stop`), accepts the CLI's real
//! request shape (system-role entries, tool lists, beta headers, unknown fields), and
//! scripts its replies from markers in the last user prompt (see [`script`] and
//! `design.md` §6). Every request is recorded so tests can assert on what the model was
//! sent, with the usage it reported; `GET /fake/requests` serves the same record to other
//! processes. Rate limits are scripted per credential ([`FakeModel::limit`], or
//! `POST /fake/limits`): a credential's requests get a 429/529 with `retry-after`. Every
//! message answer reports usage (input, output, cache read and cache creation tokens, none
//! of them 0), streamed and not.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let fake = loadtest::fake_model::FakeModel::start(listener, cancel.clone())?;
//! // … point ANTHROPIC_BASE_URL at fake.base_url(), run the CLI …
//! let history = fake.requests();
//! fake.shutdown().await;
//! # Ok(()) }
//! ```

pub mod script;
mod server;

use std::net::SocketAddr;

pub use server::{FakeModel, Limit, RecordedRequest, fingerprint};

/// Flags of `loadtest fake-model`.
#[derive(Debug, clap::Args)]
pub struct CliArgs {
    /// Address to listen on. Containers reach the host through the Docker bridge
    /// gateway (e.g. 172.17.0.1:8123), or use 0.0.0.0.
    #[arg(long, default_value = "127.0.0.1:8123")]
    pub listen: SocketAddr,
}

/// Runs the fake model API until SIGINT/SIGTERM.
pub fn cli_main(args: CliArgs, config: common::config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let _telemetry = common::telemetry::init(&config.telemetry, "loadtest-fake-model")?;
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let fake = FakeModel::start(listener, cancel.clone())?;
        tracing::info!(addr = %fake.addr(), "fake model API listening");
        let signal = shutdown_signal();
        tokio::select! {
            result = signal => result?,
            () = cancel.cancelled() => {}
        }
        fake.shutdown().await;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
