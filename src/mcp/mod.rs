//! The MCP face of deskvm: tool parameter types and thin handlers that turn each call into a
//! session [`Action`](crate::session::Action), one hand-written `call_tool` that every call
//! passes, and exported reviews as resources.

mod calls;
mod checkpoint;
mod computer;
pub mod http;
mod input;
mod params;
mod reclaim;
pub mod resources;
pub mod serve;
mod tasks;
mod tools;
mod view;

pub use serve::{serve, Transport};
pub use tools::DeskvmServer;
