//! `stylefarm_client`: the client library the `stylefarm` CLI is built on.
//!
//! ```no_run
//! # async fn demo() -> stylefarm_client::Result<()> {
//! use stylefarm_client::{Client, Input};
//! use stylefarm_proto::connect::ConnectOptions;
//! use stylefarm_proto as pb;
//!
//! let mut client = Client::connect(&ConnectOptions { url: "http://127.0.0.1:50051".into(), ..Default::default() }).await?;
//! let (photo, style) = (Input::parse("a.jpg"), Input::parse("starry.jpg"));
//! let refs = client.resolve_inputs(&[photo.clone(), style.clone()], &|_| false).await?.refs;
//! let job = pb::JobSpec { content: Some(refs[&photo].clone()), styles: vec![refs[&style].clone()], ..Default::default() };
//! let submitted = client.submit(pb::SubmitBatchRequest { jobs: vec![job], ..Default::default() }).await?;
//! client.wait(&submitted.batch_id, None).await?;
//! client.fetch(&submitted.batch_id, "out".as_ref()).await?;
//! # Ok(()) }
//! ```
//!
//! Layout: [`Client`] (`client.rs`), [`follow`] (the watch as a reconnecting
//! `Stream`), [`inputs`] (uploads by hash), [`download`] (fetch), [`error`].

mod client;
pub mod download;
pub mod error;
pub mod follow;
pub mod inputs;

pub use client::Client;
pub use download::Fetched;
pub use error::{ClientError, Result};
pub use follow::Watched;
pub use inputs::{Input, Resolved};
