//! The command line's rooms: what `deskvm <command>` does beyond serving MCP. `main.rs` parses
//! the flags and calls one of these; nothing below the CLI imports them.
//!
//! - [`choice`]: what `--accel` and `--backend` choose, shared by the commands below;
//! - [`serve`]: the session manager a server runs;
//! - [`setup`]: `setup` and `image build`, with [`host_packages`] (apt) and [`dockerd`] (the
//!   engine launch);
//! - [`doctor`], [`demo`], [`review`], [`reclaim_report`]: the commands of those names;
//! - [`engines`]: `--engine` pools, `image push`, and their part of `doctor` and `reclaim`,
//!   with [`progress`] showing long transfers.

pub mod choice;
pub mod cp;
pub mod demo;
pub mod dockerd;
pub mod doctor;
pub mod engines;
pub mod host_packages;
pub mod images;
pub mod net_args;
pub mod progress;
pub mod reclaim_report;
pub mod review;
pub mod serve;
pub mod setup;

pub use choice::{AccelChoice, BackendChoice};
