//! Test and bench helpers for deskvm, kept out of the product binary: a Chromium DevTools client
//! ([`cdp`]) and the live view page as Chromium sees it ([`probe`]).
//!
//! The tests use this crate as a dev-dependency; `deskvm bench` only when built with
//! `--features devtools` (its live-view rows). It depends on nothing of deskvm: what it knows of
//! the view page is the page's own JavaScript interface (`window.deskvmView`).

pub mod cdp;
pub mod probe;
