//! `stylefarm workers`: registered workers, their devices and running jobs;
//! `workers disable|enable|drain|forget W` (admin).

use anyhow::Result;
use stylefarm_proto as pb;

use crate::cli::{connect, Cli, WorkersAction};
use crate::output::{availability_name, print_json, WorkerJson};

pub async fn workers(cli: &Cli) -> Result<()> {
    let mut client = connect(cli).await?;
    let workers = client.list_workers(pb::ListWorkersRequest {}).await?.into_inner().workers;
    if cli.json {
        return print_json(&workers.iter().map(WorkerJson::of).collect::<Vec<_>>());
    }
    for w in &workers {
        let devices: Vec<String> = w
            .devices
            .iter()
            .map(|d| {
                let busy = w.busy.iter().find(|b| b.device == d.name).map_or(String::new(), |b| format!(", {:.1} % busy", b.fraction * 100.0));
                format!("{} ({:.1} GiB{busy})", d.name, d.memory_bytes as f64 / (1u64 << 30) as f64)
            })
            .collect();
        let mut labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let labels = if labels.is_empty() { String::new() } else { format!(", labels: {}", labels.join(" ")) };
        println!(
            "{:<6} {:<20} {:<12} {:<9} {} running [{}], {} done, {} failed, devices: {}{labels}",
            w.id,
            w.name,
            if w.connected { "connected" } else { "lost" },
            availability_name(w.availability),
            w.running_jobs.len(),
            w.running_jobs.join(","),
            w.succeeded,
            w.failed,
            devices.join(", ")
        );
    }
    Ok(())
}

pub async fn control(cli: &Cli, action: &WorkersAction) -> Result<()> {
    let mut client = connect(cli).await?;
    let (worker, action) = match action {
        WorkersAction::Disable { worker } => (worker, pb::WorkerAction::Disable),
        WorkersAction::Enable { worker } => (worker, pb::WorkerAction::Enable),
        WorkersAction::Drain { worker } => (worker, pb::WorkerAction::Drain),
        WorkersAction::Forget { worker } => {
            client.forget_worker(pb::ForgetWorkerRequest { worker_id: worker.clone() }).await?;
            if cli.json {
                return print_json(&serde_json::json!({ "worker_id": worker, "forgotten": true }));
            }
            println!("worker {worker} forgotten");
            return Ok(());
        }
    };
    let w = client.control_worker(pb::ControlWorkerRequest { worker_id: worker.clone(), action: action as i32 }).await?.into_inner();
    if cli.json {
        return print_json(&WorkerJson::of(&w));
    }
    println!("worker {} ({}) is {}; {} job(s) running", w.id, w.name, availability_name(w.availability), w.running_jobs.len());
    Ok(())
}
