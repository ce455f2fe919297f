//! W3C trace context carriage in NATS headers.
//!
//! The gateway injects the context of the span that received a Mattermost event; every
//! hop extracts it and injects its own, so one trace follows a user message through the
//! fleet. The header names are those of the W3C Trace Context specification.

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
