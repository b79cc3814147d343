//! The MCP face of deskvm: tool parameter types and thin handlers that turn each call into a
//! session [`Action`](crate::session::Action).

mod tools;

pub use tools::DeskvmServer;
