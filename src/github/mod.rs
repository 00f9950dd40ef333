//! Access to GitHub. Today: the retry layer every GitHub request goes through.

pub mod retry;
