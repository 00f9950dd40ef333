//! The edge: verifies signed deliveries and converts them at once into orch's own events.

pub mod edge;
pub mod event;
pub mod handler;
mod payload;
pub mod signature;

pub use event::{parse, Event, ParseError, Parsed};
pub use signature::{SignatureError, SignatureVerifier};
