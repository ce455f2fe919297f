//! What the egress gateway tells a session's actor, for its thread: the gateway serves many
//! sessions and never posts; the actor that owns the thread decides what the thread shows.

/// Something the thread should know about the session's way out.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A request to a host not allowed for the session was refused (the agent got a 403 or
    /// a refused `CONNECT`). The actor asks the thread whether to allow it.
    HostRefused { host: String, port: u16 },
    /// A budget is used up: the session's model requests are held until
    /// [`super::Egress::release`].
    BudgetReached {
        budget: super::budget::Budget,
        spent: f64,
        limit: f64,
    },
    /// Every model credential is rate-limited (or at its limits): the session's model
    /// requests wait until about `resume_at_ms` (Unix milliseconds). Sent once per wait.
    CredentialsCooling { resume_at_ms: u64 },
}
