//! One module per command (watch and cancel are a few lines, in [`run`]).

pub mod fetch;
pub mod status;
pub mod submit;
pub mod workers;

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect, Cli, Command};
use crate::output::{finish, print_json, CancelledJson};
use crate::watch;

pub async fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Submit(args) => {
            use tracing::Instrument;
            submit::submit(cli, args).instrument(tracing::info_span!("submit")).await
        }
        Command::Watch { batch } => {
            let mut client = connect(cli).await?;
            let batch = watch::watch(&mut client, batch, cli.json).await?;
            finish(cli, batch)
        }
        Command::Status { id } => status::status(cli, id).await,
        Command::List { state, limit } => status::list(cli, state, *limit).await,
        Command::Cancel { batch } => {
            let mut client = connect(cli).await?;
            let r = client.cancel_batch(pb::CancelBatchRequest { batch_id: batch.clone() }).await?.into_inner();
            if cli.json {
                return print_json(&CancelledJson { cancelled_queued: r.cancelled_queued, signalled_running: r.signalled_running });
            }
            println!("cancelled {} queued jobs; {} running jobs told to stop", r.cancelled_queued, r.signalled_running);
            Ok(())
        }
        Command::Fetch { batch, out } => fetch::fetch(cli, batch, out).await,
        Command::Workers => workers::workers(cli).await,
    }
}
