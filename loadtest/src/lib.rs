//! Test doubles and benchmarks: the Mattermost simulator, the fake Anthropic Messages
//! API, scripted users, and the `bench` scenarios.

pub mod bench;
pub mod chaos;
pub mod chat;
pub mod compose;
pub mod doubles;
pub mod fake_model;
pub mod faults;
pub mod fleet;
pub mod forge;
pub mod mmsim;
pub mod nats_exporter;
