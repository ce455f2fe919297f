//! loadtest's integration tests: the simulator and the fake model, through their
//! network interfaces only.

mod bench;
mod compose;
mod e2e;
mod fake_model;
mod faults;
mod mmsim;
