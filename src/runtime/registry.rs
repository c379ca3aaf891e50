//! Backend states by name, shared by every runtime generation, so that a reload neither
//! forgets that a node is down nor loses the connections a drain must move.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::snapshot::Runtime;
use crate::backend::admission::AdmissionConfig;
use crate::backend::state::BackendState;
use crate::config::{BackendConfig, Config};

/// Backend states by name, shared by every runtime generation.
#[derive(Default)]
pub struct StateRegistry {
    /// Name → state; entries of removed backends stay (their connections may still run).
    by_name: Mutex<HashMap<String, Arc<BackendState>>>,
}

impl StateRegistry {
    /// The state of `b`, created on first sight. An existing state keeps its admission limits
    /// until [`Runtime::apply_admission`] runs for a runtime actually put in service, so a
    /// refused reload changes nothing.
    pub(super) fn get(&self, b: &BackendConfig, config: &Config) -> Arc<BackendState> {
        let mut map = self.by_name.lock().expect("state registry lock");
        match map.get(&b.name) {
            Some(s) => s.clone(),
            None => {
                let s = BackendState::new(&b.name, admission_of(b, config));
                map.insert(b.name.clone(), s.clone());
                s
            }
        }
    }
}

/// The admission limits of one backend under `config` (its own, else the defaults).
fn admission_of(b: &BackendConfig, config: &Config) -> AdmissionConfig {
    AdmissionConfig {
        max_negotiations: b.max_negotiations.or(config.admission.max_negotiations),
        max_logins_per_second: b
            .max_logins_per_second
            .or(config.admission.max_logins_per_second),
        queue: config.admission.queue,
        queue_timeout: config.admission.queue_timeout,
    }
}

impl Runtime {
    /// Give every backend the admission limits of this runtime's configuration (called when
    /// the runtime goes into service).
    pub fn apply_admission(&self) {
        for (b, (_, backend)) in self.config.backends.iter().zip(self.backends.iter()) {
            backend
                .state
                .admission
                .reconfigure(admission_of(b, &self.config));
        }
    }
}
