//! From settings as written to the effective configuration the master runs on (reference §2.5,
//! §5.1): defaults applied, disabled and unrunnable services left out, listener paths resolved,
//! address lists split.

use std::fmt;

use crate::settings::{ServiceSettings, Settings, IDLE_KILL_NEVER, VSZ_LIMIT_DEFAULT};
use crate::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};

/// Services that never idle-die whatever their idle_kill says (reference §5.2 notes).
const NEVER_IDLE_DIE: &[&str] = &["stats", "old-stats", "replicator", "director"];

/// A service the driver has no program for: reported once and left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// The service.
    pub service: String,
    /// Its executable as written.
    pub executable: String,
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service({}): no program for executable '{}', left out",
            self.service, self.executable
        )
    }
}

/// The protocols `protocols` enables (`none` alone: none).
pub(super) fn enabled_protocols(settings: &Settings) -> Vec<String> {
    let words: Vec<String> = settings
        .global
        .protocols
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if words == ["none"] {
        Vec::new()
    } else {
        words
    }
}

/// Whether a service is enabled: no protocol, or its protocol is listed in `protocols`.
pub(super) fn is_enabled(settings: &Settings, service: &ServiceSettings) -> bool {
    service.protocol.is_empty() || enabled_protocols(settings).contains(&service.protocol)
}

/// Effective process_limit.
pub(super) fn effective_process_limit(settings: &Settings, service: &ServiceSettings) -> u32 {
    match service.process_limit {
        0 => settings.global.default_process_limit.max(1),
        limit => limit,
    }
}

/// Effective service_count: as written, except for an inetd-style service (`executable =
/// inetd PROGRAM`), whose every process takes one connection and becomes the program with it.
pub(super) fn effective_service_count(service: &ServiceSettings) -> u32 {
    if service.executable.split_whitespace().next() == Some("inetd") {
        1
    } else {
        service.service_count
    }
}

/// Effective client_limit: defaulted, then capped by the effective service_count.
pub(super) fn effective_client_limit(settings: &Settings, service: &ServiceSettings) -> u32 {
    let limit = match service.client_limit {
        0 => settings.global.default_client_limit.max(1),
        limit => limit,
    };
    match effective_service_count(service) {
        0 => limit,
        count => limit.min(count),
    }
}

/// Effective vsz_limit in bytes (0 = none).
pub(super) fn effective_vsz_limit(settings: &Settings, service: &ServiceSettings) -> u64 {
    if service.vsz_limit == VSZ_LIMIT_DEFAULT {
        settings.global.default_vsz_limit
    } else {
        service.vsz_limit
    }
}

/// Resolves a listener path against base_dir.
pub(super) fn resolve_path(settings: &Settings, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", settings.global.base_dir)
    }
}

/// The master's configuration: every enabled service with an executable the driver can run.
/// Services that are enabled but not runnable are returned to be reported.
pub fn master_config(
    settings: &Settings,
    runnable: &dyn Fn(&ServiceSettings) -> bool,
) -> (MasterConfig, Vec<LeftOut>) {
    let mut services: Vec<ServiceConfig> = Vec::new();
    let mut left_out = Vec::new();
    let mut serves_a_protocol = false;
    for service in &settings.services {
        if !is_enabled(settings, service) || service.executable.trim().is_empty() {
            continue;
        }
        if !runnable(service) {
            left_out.push(LeftOut {
                service: service.name.clone(),
                executable: service.executable.clone(),
            });
            continue;
        }
        serves_a_protocol |= !service.protocol.is_empty();
        services.push(service_config(settings, service));
    }
    // anvil counts the connections of the protocols' processes: with no protocol served,
    // nobody would ever talk to it, so it is not started (the original always starts it).
    if !serves_a_protocol {
        services.retain(|s| s.service_type != ServiceType::Anvil);
    }
    (
        MasterConfig {
            services,
            shutdown_clients: settings.global.shutdown_clients,
        },
        left_out,
    )
}

fn service_config(settings: &Settings, service: &ServiceSettings) -> ServiceConfig {
    let service_type =
        ServiceType::from_word(&service.service_type).unwrap_or(ServiceType::Default);
    let process_limit = effective_process_limit(settings, service);
    let idle_kill = match service.idle_kill {
        _ if NEVER_IDLE_DIE.contains(&service.name.as_str()) => None,
        d if d >= IDLE_KILL_NEVER => None,
        d if d.is_zero() => Some(settings.global.default_idle_kill),
        d => Some(d),
    };
    let basename = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();
    let mut listeners = Vec::new();
    // Unix listeners first, then fifos (DESIGN.md "Child fds"); mode 0 disables one.
    let files = service
        .unix_listeners
        .iter()
        .map(|l| (true, l))
        .chain(service.fifo_listeners.iter().map(|l| (false, l)));
    for (unix, l) in files.filter(|(_, l)| l.mode != 0 && !l.path.is_empty()) {
        let (path, mode, user, group) = (
            resolve_path(settings, &l.path),
            l.mode,
            l.user.clone(),
            l.group.clone(),
        );
        let kind = if unix {
            ListenerKind::Unix {
                path,
                mode,
                user,
                group,
            }
        } else {
            ListenerKind::Fifo {
                path,
                mode,
                user,
                group,
            }
        };
        listeners.push(ListenerConfig {
            name: basename(&l.path),
            kind,
        });
    }
    for l in &service.inet_listeners {
        if l.port == 0 || (l.ssl && settings.global.ssl == "no") {
            continue;
        }
        let addresses = if l.address.trim().is_empty() {
            &settings.global.listen
        } else {
            &l.address
        };
        for address in addresses.split([',', ' ', '\t']).filter(|a| !a.is_empty()) {
            listeners.push(ListenerConfig {
                name: if l.name.is_empty() {
                    service.name.clone()
                } else {
                    l.name.clone()
                },
                kind: ListenerKind::Inet {
                    address: address.to_owned(),
                    port: l.port,
                    ssl: l.ssl,
                    haproxy: l.haproxy,
                    reuse_port: l.reuse_port,
                },
            });
        }
    }
    ServiceConfig {
        name: service.name.clone(),
        protocol: service.protocol.clone(),
        service_type,
        process_limit,
        client_limit: effective_client_limit(settings, service),
        service_count: effective_service_count(service),
        process_min_avail: service.process_min_avail.min(process_limit),
        idle_kill,
        vsz_limit: effective_vsz_limit(settings, service),
        foreign: service.foreign,
        listeners,
    }
}

/// The effective values the master uses, one service a block (`roost config -e`).
pub fn print_effective(config: &MasterConfig) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shutdown_clients = {}",
        if config.shutdown_clients { "yes" } else { "no" }
    );
    for s in &config.services {
        let _ = writeln!(out, "service {} {{", s.name);
        let _ = writeln!(out, "  type = {}", s.service_type.as_str());
        let _ = writeln!(out, "  process_limit = {}", s.process_limit);
        let _ = writeln!(out, "  client_limit = {}", s.client_limit);
        let _ = writeln!(out, "  service_count = {}", s.service_count);
        let _ = writeln!(out, "  process_min_avail = {}", s.process_min_avail);
        let idle = s
            .idle_kill
            .map(super::value::format_time)
            .unwrap_or_else(|| "never".to_owned());
        let _ = writeln!(out, "  idle_kill = {idle}");
        let _ = writeln!(
            out,
            "  vsz_limit = {}",
            super::value::format_size(s.vsz_limit)
        );
        if s.foreign {
            let _ = writeln!(out, "  foreign = yes");
        }
        for l in &s.listeners {
            match &l.kind {
                ListenerKind::Unix {
                    path,
                    mode,
                    user,
                    group,
                } => {
                    let _ = writeln!(
                        out,
                        "  unix_listener {path} {{ mode = {} user = {user} group = {group} }}",
                        super::value::format_mode(*mode)
                    );
                }
                ListenerKind::Fifo {
                    path,
                    mode,
                    user,
                    group,
                } => {
                    let _ = writeln!(
                        out,
                        "  fifo_listener {path} {{ mode = {} user = {user} group = {group} }}",
                        super::value::format_mode(*mode)
                    );
                }
                ListenerKind::Inet {
                    address,
                    port,
                    ssl,
                    haproxy,
                    reuse_port,
                } => {
                    let _ = writeln!(
                        out,
                        "  inet_listener {} {{ address = {address} port = {port} ssl = {} haproxy = {} reuse_port = {} }}",
                        l.name,
                        if *ssl { "yes" } else { "no" },
                        if *haproxy { "yes" } else { "no" },
                        if *reuse_port { "yes" } else { "no" }
                    );
                }
            }
        }
        let _ = writeln!(out, "}}");
    }
    out
}
