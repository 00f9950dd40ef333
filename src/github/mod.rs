//! Access to GitHub: App authentication, the retry layer every request goes through, the REST
//! client, exactly-once writes, and a stateful fake GitHub for tests and the demo.

pub mod actions;
pub mod auth;
pub mod client;
pub mod fake;
pub mod marks;
pub mod redeliver;
pub mod rest_schema;
pub mod retry;
pub mod tarball;
