//! deskvm: an MCP server that gives AI agents a real desktop in a QEMU virtual machine.
//!
//! The rooms, top floor first; each uses only rooms below it (`docs/architecture.md`, checked by
//! `tests/architecture.rs`):
//! [`bench`] → [`cli`] → [`client`] → [`http`] (the front door: transports, auth, routes) →
//! [`mcp`] (the one tool handler) → [`view`] (live views) → [`session`] (one lane per session,
//! typed actions and errors) → [`backend`] (where QEMU runs) → [`ledger`] (review ledgers),
//! [`guest_image`] (guest images, ready states), [`accel`] → [`storage`] (the roots, owner
//! marks, reclaim) → [`vm`] (the QEMU machine: QMP display/input, guest agent).

pub mod accel;
pub mod backend;
pub mod egress;
pub mod guest_image;
pub mod http;
pub mod ledger;
pub mod mcp;
pub mod session;
pub mod storage;
pub mod view;
pub mod vm;

pub mod bench;
pub mod cli;
pub mod client;
