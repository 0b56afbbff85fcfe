//! `stylefarm workers`: registered workers, their devices and running jobs.

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect, Cli};
use crate::output::{print_json, WorkerJson};

pub async fn workers(cli: &Cli) -> Result<()> {
    let mut client = connect(cli).await?;
    let workers = client.list_workers(pb::ListWorkersRequest {}).await?.into_inner().workers;
    if cli.json {
        return print_json(&workers.iter().map(WorkerJson::of).collect::<Vec<_>>());
    }
    for w in &workers {
        let devices: Vec<String> = w.devices.iter().map(|d| format!("{} ({:.1} GiB)", d.name, d.memory_bytes as f64 / (1u64 << 30) as f64)).collect();
        println!(
            "{:<6} {:<20} {:<12} {} running [{}], {} done, {} failed, devices: {}",
            w.id,
            w.name,
            if w.connected { "connected" } else { "lost" },
            w.running_jobs.len(),
            w.running_jobs.join(","),
            w.succeeded,
            w.failed,
            devices.join(", ")
        );
    }
    Ok(())
}
