//! Gateway integration tests: real NATS, Postgres and S3 (via `common::testsupport`), the
//! Mattermost simulator driven through its public API.

mod admin;
mod artifacts;
mod egress;
mod harness;
mod ingress;
