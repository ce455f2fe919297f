//! proto's integration tests: golden bytes, version checks, round trips.

mod golden;
mod kv;
mod roundtrip;
mod samples;
mod versions;
