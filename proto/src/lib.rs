//! stylefarm's wire contract, generated from `proto/stylefarm/v1/stylefarm.proto`.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("stylefarm.v1");

    /// The encoded `FileDescriptorSet`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stylefarm_descriptor.bin"));
}

pub use v1::*;

/// KEDA's external scaler contract, served by the coordinator for autoscaling.
#[allow(clippy::all)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

pub mod connect;
pub mod frames;
pub mod mosaic;
pub mod names;
