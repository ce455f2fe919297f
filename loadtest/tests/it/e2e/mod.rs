//! End to end: everything real except Mattermost and the model — nats-server, PostgreSQL,
//! Garage, the real Claude Code CLI (process runtime here; docker in `docker.rs`), the fake
//! model and the simulator — acting as users through the simulator's public API.

mod budgets;
mod chat;
mod checkpoints;
mod credentials;
mod cut_turns;
mod docker;
mod domains;
mod entry;
mod failures;
mod fencing;
mod fleet;
mod metrics;
mod model_api;
mod outage;
mod repos;
mod retention;
mod sandbox;
pub mod support;
mod traces;
mod workspace_limit;
