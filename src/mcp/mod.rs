//! The MCP face of deskvm: tool parameter types and thin handlers that turn each call into a
//! session [`Action`](crate::session::Action), one hand-written `call_tool` that every call
//! passes, and exported reviews as resources. Transports and auth are the front door's
//! (`crate::http`, above this room): a call arrives here with who made it ([`Principal`]).

mod calls;
mod checkpoint;
mod computer;
mod files;
mod input;
mod params;
mod params_io;
mod reclaim;
pub mod resources;
mod tasks;
mod tools;
mod view;

pub use calls::{text_of, Connection, Principal};
pub use tools::DeskvmServer;
