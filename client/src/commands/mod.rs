//! One module per command (watch is a few lines, in [`run`]).

pub mod control;
pub mod fetch;
pub mod status;
pub mod submit;
pub mod workers;

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect_client, Cli, Command};
use crate::output::finish;
use crate::watch;

pub async fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Submit(args) => {
            use tracing::Instrument;
            submit::submit(cli, args).instrument(tracing::info_span!("submit")).await
        }
        Command::Watch { batch } => {
            let mut client = connect_client(cli).await?;
            let batch = watch::watch(&mut client, batch, cli.json).await?;
            finish(cli, batch)
        }
        Command::Status { id } => status::status(cli, id).await,
        Command::List { state, limit } => status::list(cli, state, *limit).await,
        Command::Cancel { batch, job } => control::cancel(cli, batch.as_deref(), job.as_deref()).await,
        Command::Priority { batch, priority } => control::priority(cli, batch, *priority).await,
        Command::Pause { batch, now } => {
            let mode = if *now { pb::PauseMode::HandBackNow } else { pb::PauseMode::FinishRunning };
            control::pause(cli, batch, mode).await
        }
        Command::Resume { batch } => control::resume(cli, batch).await,
        Command::Unblock { worker, batch } => control::unblock(cli, worker, batch).await,
        Command::Retry { batch, job, failed: _ } => control::retry(cli, batch, job.as_deref()).await,
        Command::Fetch { batch, out } => fetch::fetch(cli, batch, out).await,
        Command::Delete { batch, force } => {
            let mode = if *force { pb::DeleteMode::CancelRunning } else { pb::DeleteMode::IfIdle };
            control::delete(cli, batch, mode).await
        }
        Command::Workers { action: None } => workers::workers(cli).await,
        Command::Workers { action: Some(action) } => workers::control(cli, action).await,
    }
}
