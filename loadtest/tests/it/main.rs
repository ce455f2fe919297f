//! loadtest's integration tests: the simulator and the fake model, through their
//! network interfaces only; and the deployment chart against the names and configuration
//! the code uses (`helm_names`); the dashboards and alert rules against promtool and a real
//! Prometheus scraping a running fleet (`observability`).

mod bench;
mod chaos;
mod compose;
mod e2e;
mod fake_model;
mod faults;
mod forge;
mod fuzz_corpus;
mod helm_names;
mod mmsim;
mod observability;
