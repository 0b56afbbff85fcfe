//! The gRPC services: [`client::ClientApi`] for users, [`worker::WorkerService`]
//! for workers, [`scaler::ScalerService`] for KEDA.

pub mod client;
mod inputs;
pub mod scaler;
pub mod worker;
