//! The coordinator tests' helpers, and a real worker (the engine, so libtorch)
//! run in-process.

use std::path::Path;

pub use stylefarm_coordinator_tests::farm::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A real farm worker (the engine on the CPU), in-process.
pub struct InProcessWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl InProcessWorker {
    pub fn start(coordinator_url: &str, name: &str, work_dir: &Path) -> InProcessWorker {
        InProcessWorker::start_with(coordinator_url, name, work_dir, 30)
    }

    /// With its own drain timeout (0: hand running jobs back at once on stop).
    pub fn start_with(coordinator_url: &str, name: &str, work_dir: &Path, drain_timeout_s: u64) -> InProcessWorker {
        InProcessWorker::start_args(stylefarm_worker::farm::FarmArgs {
            coordinator: Some(coordinator_url.to_string()),
            devices: "cpu".into(),
            name: Some(name.into()),
            torch_threads: None,
            drain_timeout_s,
            work_dir: Some(work_dir.to_path_buf()),
            ..Default::default()
        })
    }

    /// With any flags.
    pub fn start_args(args: stylefarm_worker::farm::FarmArgs) -> InProcessWorker {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            stylefarm_worker::farm::serve(&args, async move {
                let _ = stopped.await;
            })
            .await
        });
        InProcessWorker { stop: Some(stop), handle }
    }

    /// SIGTERM-like: drain and return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.await.expect("worker task").expect("worker drained cleanly");
    }
}
