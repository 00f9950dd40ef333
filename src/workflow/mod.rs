//! Workflows: the state machine every triage, QA plan and patch request walks through (SPEC §3),
//! and the arithmetic of the approval ledger (SPEC §6). Both are pure: the store persists what
//! they decide, so the rules can be tested exhaustively without a database.

pub mod approval;
pub mod authz;
pub mod context;
pub mod engine;
pub mod guard;
pub mod messages;
pub mod service;
pub mod shown;
pub mod state;
pub mod triggers;
