//! `stylefarm`: the stylefarm client.
//!
//! Exit codes ([`exit::Exit`]): 0 done (a waited-for batch succeeded); 1 a
//! batch finished with failed jobs; 2 invalid input (ours or the coordinator's
//! INVALID_ARGUMENT); 3 the coordinator is unreachable or unavailable; 4 not
//! found; 5 the batch was cancelled; 6 any other error; 7 not authenticated or
//! not allowed (a missing, wrong or revoked token, or the wrong role).
//!
//! Layout: [`cli`] (flags and the connection), [`commands`] (one module per
//! command), [`output`] (what `--json` prints, as serde types), [`exit`].

mod cli;
mod commands;
mod exit;
mod frames;
mod manifest;
mod output;
mod tiles;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use stylefarm_client::ClientError;

use cli::Cli;
use exit::Exit;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // spans (the submit, continued by the coordinator and the workers) over OTLP
    // when OTEL_EXPORTER_OTLP_ENDPOINT is set; logs then go to stderr per STYLEFARM_LOG
    let traces = if stylefarm_core::traces::otlp_configured() {
        let log = std::env::var("STYLEFARM_LOG").unwrap_or_else(|_| "warn".into());
        match stylefarm_core::traces::init("stylefarm-client", &log, false) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Invalid.into();
            }
        }
    } else {
        None
    };
    let result = commands::run(&cli).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = Exit::of(&error);
            // the coordinator's message as it sent it, after our context if any
            match error.chain().find_map(status_of) {
                Some(s) if status_of(error.as_ref()).is_some() => eprintln!("error: {}", s.message()),
                Some(s) => eprintln!("error: {error}: {}", s.message()),
                None => eprintln!("error: {error:#}"),
            }
            code.into()
        }
    }
}

/// The coordinator's answer an error carries, if it is one.
fn status_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a tonic::Status> {
    e.downcast_ref::<tonic::Status>().or_else(|| e.downcast_ref::<ClientError>().and_then(ClientError::status))
}
