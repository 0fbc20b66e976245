//! The one place where the simulator reads the master's state beyond the sans-IO contract
//! (`handle`, `poll_output`, `poll_timeout`, `check_invariants`): its read-only queries, for
//! routing connections, the outside checks and the liveness check.
//!
//! Keeping them here means a change of the master's query API (there were two candidate
//! implementations at the time of writing) is a change of this file only.

use roost_core::ids::{Generation, ListenerId, ServiceId};
use roost_core::master::Master;
use roost_core::setup::ServiceConfig;

/// What the simulator needs to know about one service of the master.
#[derive(Clone, Debug)]
pub struct ServiceView {
    /// Its id.
    pub id: ServiceId,
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: Generation,
    /// Live processes.
    pub process_count: u32,
    /// Processes with a free slot.
    pub process_avail: u32,
    /// Throttled now.
    pub throttled: bool,
    /// Its effective settings.
    pub config: ServiceConfig,
    /// Its listeners, in the order a child receives them.
    pub listeners: Vec<ListenerId>,
}

/// Every service of every live generation.
pub fn services(master: &Master) -> Vec<ServiceView> {
    master
        .services()
        .filter_map(|s| {
            let config = master.service_config(s.id)?.clone();
            Some(ServiceView {
                id: s.id,
                name: s.name,
                generation: s.generation,
                process_count: s.process_count,
                process_avail: s.process_avail,
                throttled: s.throttle_secs > 0,
                config,
                listeners: master.service_listeners(s.id).to_vec(),
            })
        })
        .collect()
}

/// One service.
pub fn service(master: &Master, id: ServiceId) -> Option<ServiceView> {
    services(master).into_iter().find(|s| s.id == id)
}

/// The effective settings of one service.
pub fn service_config(master: &Master, id: ServiceId) -> Option<ServiceConfig> {
    master.service_config(id).cloned()
}

/// The listen backlog of a service's sockets: the load profile's, or as the shell sets it,
/// max(process_limit × client_limit, 4) capped at somaxconn (reference §2.3).
pub fn listen_backlog(master: &Master, service: ServiceId, configured: Option<u32>) -> u32 {
    configured.unwrap_or_else(|| {
        service_config(master, service)
            .map(|c| c.process_limit.saturating_mul(c.client_limit).max(4))
            .unwrap_or(4)
            .min(crate::des::SOMAXCONN)
    })
}

/// The listeners of one service.
pub fn service_listeners(master: &Master, id: ServiceId) -> Vec<ListenerId> {
    master.service_listeners(id).to_vec()
}

/// The name of the service a listener belongs to.
pub fn listener_service_name(master: &Master, listener: ListenerId) -> Option<String> {
    master.listener_service_name(listener).map(str::to_owned)
}

/// Processes alive over every generation.
pub fn process_total(master: &Master) -> usize {
    master.process_count()
}

/// The master's view of the processes of a service, one line each (for failure messages).
pub fn process_lines(master: &Master, name: &str) -> Vec<String> {
    master
        .processes()
        .filter(|p| p.service == name)
        .map(|p| format!("{p:?}"))
        .collect()
}
