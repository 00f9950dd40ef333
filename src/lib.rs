//! orch: a GitHub App that lets a language model propose work on a repository, under policy,
//! approvals and a tamper-evident audit log. The modules follow the pipeline:
//! `webhook` (verify, parse) → `store` (durable deliveries, job queue) → `worker` (processing),
//! with `api` serving HTTP and `config` reading the operator's settings. `commands` is the pure
//! `/orch` comment grammar (which lines are commands, what they say, the replies to bad ones).

pub mod api;
pub mod app;
pub mod audit;
pub mod commands;
pub mod config;
pub mod demo;
pub mod github;
pub mod llm;
pub mod policy;
pub mod store;
pub mod webhook;
pub mod worker;
pub mod workflow;
