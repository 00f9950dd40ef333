//! Access to GitHub: App authentication and the retry layer every GitHub request goes through.

pub mod auth;
pub mod retry;
