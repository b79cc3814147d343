//! The MCP face of deskvm: tool parameter types and thin handlers that turn each call into a
//! session [`Action`](crate::session::Action), one hand-written `call_tool` that every call
//! passes, and exported reviews as resources.

mod params;
mod reclaim;
mod resources;
mod tools;

pub use tools::DeskvmServer;
