//! deskvm: an MCP server that gives AI agents a real desktop in a QEMU virtual machine.
//!
//! Data path, top to bottom: [`mcp`] (tool calls) → [`session`] (one lane per session, typed
//! actions and errors) → [`vm`] (QMP display/input, guest agent) → [`backend`] (where QEMU runs),
//! with [`image`] providing guest images and ready states and [`storage`] the directories.

pub mod accel;
pub mod backend;
pub mod http;
pub mod image;
pub mod ledger;
pub mod mcp;
pub mod session;
pub mod storage;
pub mod view;
pub mod vm;

pub mod bench;
pub mod cli;
pub mod client;
