//! The embedded registry: runners and sandboxes listed in the config file.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{BoxFuture, Registry, RegistryError, RunnerRecord, SandboxRecord, Upstream};
use crate::config::RegistryConfig;

type Table = HashMap<Box<str>, Arc<SandboxRecord>>;

/// Atomically replaceable, so a reload never blocks or drops requests.
pub struct StaticRegistry {
    table: ArcSwap<Table>,
}

impl StaticRegistry {
    pub fn from_config(config: &RegistryConfig) -> Result<StaticRegistry, String> {
        Ok(StaticRegistry {
            table: ArcSwap::from_pointee(build_table(config)?),
        })
    }

    /// Swaps in a new table; on error the old one stays in force.
    pub fn reload(&self, config: &RegistryConfig) -> Result<usize, String> {
        let table = build_table(config)?;
        let n = table.len();
        self.table.store(Arc::new(table));
        Ok(n)
    }

    pub fn get(&self, id: &str) -> Option<Arc<SandboxRecord>> {
        self.table.load().get(id).cloned()
    }
}

impl Registry for StaticRegistry {
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
        let found = self.get(id);
        Box::pin(async move { Ok(found) })
    }
}

fn build_table(config: &RegistryConfig) -> Result<Table, String> {
    let mut runners = HashMap::new();
    for r in &config.runners {
        let record = RunnerRecord::new(&r.id, &r.url, &r.api_key)?;
        if runners.insert(r.id.as_str(), Arc::new(record)).is_some() {
            return Err(format!("registry.runners: duplicate runner id {:?}", r.id));
        }
    }
    let mut table = Table::new();
    for s in &config.sandboxes {
        let upstream = match (&s.runner, &s.address) {
            (Some(runner), None) => Upstream::Runner(
                runners
                    .get(runner.as_str())
                    .ok_or_else(|| format!("sandbox {}: unknown runner {runner:?}", s.id))?
                    .clone(),
            ),
            (None, Some(address)) => {
                if address.is_empty() || address.contains(['/', ' ', '@']) {
                    return Err(format!(
                        "sandbox {}: address {address:?} is not a host",
                        s.id
                    ));
                }
                Upstream::Direct {
                    address: address.as_str().into(),
                }
            }
            _ => {
                return Err(format!(
                    "sandbox {}: set exactly one of runner or address",
                    s.id
                ))
            }
        };
        if s.id.is_empty()
            || !s
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("sandbox id {:?} must be [A-Za-z0-9_-]+", s.id));
        }
        let record =
            SandboxRecord::new(&s.id, upstream, s.public, &s.state, s.auth_token.as_deref());
        if table
            .insert(s.id.to_ascii_lowercase().into(), Arc::new(record))
            .is_some()
        {
            return Err(format!(
                "registry.sandboxes: duplicate sandbox id {:?}",
                s.id
            ));
        }
    }
    Ok(table)
}
