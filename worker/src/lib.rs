//! The farm worker as a library, so tests can run workers in-process; the
//! `stylefarm-worker` binary adds `render`, `weights` and `bench`.

pub mod farm;
pub mod video;
