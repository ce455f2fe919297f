//! Which background loops of a process are down now, for its `/readyz`: a loop is marked
//! down when it fails and up once it runs again; the process is ready while none is down.
//! (Why it failed goes to the log, not to `/readyz`.)

use std::collections::BTreeSet;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<BTreeSet<&'static str>>,
}

impl Health {
    pub fn set_down(&self, part: &'static str) {
        self.lock().insert(part);
    }

    pub fn set_up(&self, part: &'static str) {
        self.lock().remove(part);
    }

    /// The loops that are down, sorted; empty when ready.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn a_loop_is_down_until_it_is_up_again() {
        let health = Health::default();
        assert!(health.down().is_empty());
        health.set_down("websocket");
        health.set_down("egress");
        assert_eq!(health.down(), ["egress", "websocket"]);
        health.set_up("egress");
        health.set_up("egress");
        assert_eq!(health.down(), ["websocket"]);
    }
}
