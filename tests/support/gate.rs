//! A gate the start fixtures (hook, control plane, Redis orchestrator) pass before a sandbox
//! comes up: open by default; a test closes it to keep a start in progress for as long as it
//! needs (e.g. until every request it sent is held), then opens it.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Gate(watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Gate {
        Gate(watch::channel(true).0)
    }
}

impl Gate {
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Returns once the gate is open.
    pub async fn passed(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}
