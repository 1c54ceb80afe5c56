//! Errors of the supervisor API.

use std::time::Duration;

use crate::event::{InstanceId, InstanceState};

/// Everything a supervisor call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A spec is invalid on its own.
    #[error("service {service}: {reason}")]
    InvalidSpec {
        /// Service name as given.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// Two specs share a name.
    #[error("service {0} is defined twice")]
    DuplicateService(String),
    /// `depends_on` names a service that does not exist.
    #[error("service {service} depends on unknown service {dependency}")]
    UnknownDependency {
        /// The depending service.
        service: String,
        /// The missing one.
        dependency: String,
    },
    /// `depends_on` forms a cycle (listed in order, first repeated at the end).
    #[error("dependency cycle: {}", .0.join(" -> "))]
    DependencyCycle(Vec<String>),
    /// `start` was called outside a Tokio runtime.
    #[error("the supervisor must be started inside a Tokio runtime")]
    NoRuntime,
    /// No service of that name.
    #[error("unknown service {0}")]
    UnknownService(String),
    /// No instance with that id.
    #[error("unknown instance {0}")]
    UnknownInstance(InstanceId),
    /// The operation does not apply to the instance's current state.
    #[error("{id} is {state}: cannot {op}")]
    InvalidState {
        /// The instance.
        id: InstanceId,
        /// Its state when asked.
        state: InstanceState,
        /// The operation refused.
        op: &'static str,
    },
    /// A rolling restart stopped because a new instance did not become ready; the old
    /// instances that were not replaced yet keep running.
    #[error("rolling restart of {service} aborted: {instance} {reason} ({replaced} instance(s) replaced before)")]
    RolloutAborted {
        /// The service.
        service: String,
        /// The new instance that failed (already stopped again).
        instance: InstanceId,
        /// Old instances replaced before the failure.
        replaced: u32,
        /// Why, e.g. "not ready after 30s".
        reason: String,
        /// Time spent.
        elapsed: Duration,
    },
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// The spawner thread could not be started.
    #[error("cannot start the spawner thread: {0}")]
    Spawner(#[source] std::io::Error),
    /// No slot index with a bindable port was found for a new instance.
    #[error("service {0}: no free instance slot with a bindable port")]
    NoFreeSlot(String),
}
