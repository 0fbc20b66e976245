//! The checks of reference §3: errors that refuse a configuration (§3.4) and the startup warnings
//! (§3.1-3.3), with the original's texts. They work on the configuration as written, whether or
//! not roost runs each service, exactly as the original's do.

use std::collections::BTreeMap;
use std::fmt;

use super::derive::{
    effective_process_limit, effective_vsz_limit, enabled_protocols, is_enabled, resolve_path,
};
use super::{Config, ConfigError, ListenerType, ParseWarning, RawService, System};
use crate::settings::{ServiceSettings, Settings};
use crate::setup::ServiceType;

/// Services whose process_limit must be 1 (reference §3.4).
const SINGLE_INSTANCE: &[&str] = &[
    "anvil",
    "auth",
    "director",
    "indexer",
    "ipc",
    "log",
    "old-stats",
    "replicator",
];

/// A startup warning.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// A warning of the parser (ambiguous `#`).
    Parse(ParseWarning),
    /// §3.1: auth's client_limit is lower than the services that hold connections to it need.
    AuthClientLimit {
        /// auth's client_limit.
        client_limit: u32,
        /// What is needed.
        needed: u64,
        /// The services counted, with their process_limit.
        counted: Vec<(String, u32)>,
    },
    /// §3.2: anvil's client_limit is lower than needed.
    AnvilClientLimit {
        /// anvil's client_limit.
        client_limit: u32,
        /// What is needed.
        needed: u64,
        /// The services counted, with their process_limit.
        counted: Vec<(String, u32)>,
    },
    /// §3.3: RLIMIT_NOFILE is lower than the largest client_limit.
    FdLimit {
        /// The soft limit.
        limit: u64,
        /// The largest client_limit.
        needed: u64,
        /// Which setting asks for it: `None` = default_client_limit.
        because_of: Option<String>,
    },
    /// A unix listener path starts with base_dir.
    RemoveBaseDirPrefix {
        /// The path.
        path: String,
    },
}

fn counted_list(counted: &[(String, u32)]) -> String {
    counted
        .iter()
        .map(|(name, limit)| format!("service {name} {{ process_limit={limit} }}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Parse(warning) => write!(f, "{warning}"),
            Warning::AuthClientLimit { client_limit, needed, counted } => write!(
                f,
                "service auth {{ client_limit={client_limit} }} is lower than required under max. load ({needed}). Counted for protocol services with service_count != 1: {}",
                counted_list(counted)
            ),
            Warning::AnvilClientLimit { client_limit, needed, counted } => write!(
                f,
                "service anvil {{ client_limit={client_limit} }} is lower than required under max. load ({needed}). Counted with: {}",
                counted_list(counted)
            ),
            Warning::FdLimit { limit, needed, because_of } => {
                write!(f, "fd limit (ulimit -n) is lower than required under max. load ({limit} < {needed}), because of ")?;
                match because_of {
                    None => f.write_str("default_client_limit"),
                    Some(service) => write!(f, "service {service} {{ client_limit }}"),
                }
            }
            Warning::RemoveBaseDirPrefix { path } => {
                write!(f, "You should remove base_dir prefix from unix_listener: {path}")
            }
        }
    }
}

/// Runs every check: the errors that refuse the configuration, or the warnings to show.
pub fn check(config: &Config, system: &dyn System) -> Result<Vec<Warning>, Vec<ConfigError>> {
    let settings = &config.settings;
    let mut errors = Vec::new();
    let mut error = |text: String| errors.push(ConfigError::Check(text));
    let global = &settings.global;
    if global.listen.trim().is_empty() {
        error("listen can't be set empty".to_owned());
    }
    for (first, last, what) in [
        ("first_valid_uid", "last_valid_uid", "uid"),
        ("first_valid_gid", "last_valid_gid", "gid"),
    ] {
        let number = |key: &str| {
            config
                .raw
                .globals
                .get(key)
                .map(|v| v.text.as_str())
                .unwrap_or(super::global_defaults()[key])
                .parse::<u64>()
                .unwrap_or(0)
        };
        let (first_value, last_value) = (number(first), number(last));
        if last_value != 0 && first_value > last_value {
            error(format!(
                "first_valid_{what} can't be larger than last_valid_{what}"
            ));
        }
    }
    for (key, user) in [
        ("default_login_user", &global.default_login_user),
        ("default_internal_user", &global.default_internal_user),
    ] {
        if !system.user_exists(user) {
            error(format!("{key} doesn't exist: {user}"));
        }
    }
    if settings.services.is_empty() {
        error("No services defined".to_owned());
    }
    let mut names = BTreeMap::new();
    let mut type_counts: BTreeMap<&str, u32> = BTreeMap::new();
    for service in &settings.services {
        if names.insert(service.name.as_str(), ()).is_some() {
            error(format!("Duplicate service name: {}", service.name));
        }
        match ServiceType::from_word(&service.service_type) {
            None => error(format!(
                "service({}): Unknown service type: {}",
                service.name, service.service_type
            )),
            Some(t @ (ServiceType::Log | ServiceType::Anvil | ServiceType::Config)) => {
                if is_enabled(settings, service) && !service.executable.trim().is_empty() {
                    *type_counts.entry(t.as_str()).or_default() += 1;
                }
            }
            Some(_) => {}
        }
    }
    for (kind, count) in type_counts {
        if count > 1 {
            error(format!("Multiple {kind} services specified"));
        }
    }
    for protocol in enabled_protocols(settings) {
        if !settings.services.iter().any(|s| s.protocol == protocol) {
            error(format!("protocols: Unknown protocol: {protocol}"));
        }
    }
    let mut listeners: BTreeMap<String, String> = BTreeMap::new();
    let mut warnings: Vec<Warning> = config
        .raw
        .warnings
        .iter()
        .cloned()
        .map(Warning::Parse)
        .collect();
    for service in settings
        .services
        .iter()
        .filter(|s| is_enabled(settings, s) && !s.executable.trim().is_empty())
    {
        let raw = config
            .raw
            .services
            .iter()
            .find(|raw| raw.name == service.name);
        check_service(settings, service, raw, system, &mut |text| {
            errors.push(ConfigError::Check(text))
        });
        for listener in service.unix_listeners.iter().chain(&service.fifo_listeners) {
            if listener.path.is_empty() {
                errors.push(ConfigError::Check(format!(
                    "service({}): path must not be empty",
                    service.name
                )));
                continue;
            }
            if listener.mode == 0 {
                continue;
            }
            if listener.path.starts_with(&format!("{}/", global.base_dir)) {
                warnings.push(Warning::RemoveBaseDirPrefix {
                    path: listener.path.clone(),
                });
            }
            let path = resolve_path(settings, &listener.path);
            if listeners
                .insert(path.clone(), service.name.clone())
                .is_some()
            {
                errors.push(ConfigError::Check(format!("duplicate listener: {path}")));
            }
        }
        for listener in service.inet_listeners.iter().filter(|l| l.port != 0) {
            let key = format!("{}:{}", listener.port, listener.address);
            if listeners
                .insert(key.clone(), service.name.clone())
                .is_some()
            {
                errors.push(ConfigError::Check(format!("duplicate listener: {key}")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    warnings.extend(load_warnings(settings, system));
    Ok(warnings)
}

fn check_service(
    settings: &Settings,
    service: &ServiceSettings,
    raw: Option<&RawService>,
    system: &dyn System,
    error: &mut dyn FnMut(String),
) {
    // A user or group that comes from a default_* setting is checked once, globally.
    let from_default = |listener: Option<&str>, key: &str| {
        raw.is_some_and(|raw| {
            let text = match listener {
                None => raw.text(key),
                Some(path) => raw
                    .listeners
                    .iter()
                    .find(|l| l.name == path && l.listener_type == ListenerType::Unix)
                    .and_then(|l| l.settings.get(key))
                    .map(|v| v.text.as_str())
                    .unwrap_or(""),
            };
            text.starts_with("$default_")
        })
    };
    let user_from_default = from_default(None, "user");
    let name = &service.name;
    if service.drop_priv_before_exec && !service.chroot.is_empty() {
        error(format!(
            "service({name}): drop_priv_before_exec=yes can't be used with chroot"
        ));
    }
    let process_limit = effective_process_limit(settings, service);
    if service.process_min_avail > process_limit {
        error(format!(
            "service({name}): process_min_avail is higher than process_limit"
        ));
    }
    let vsz = effective_vsz_limit(settings, service);
    if vsz != 0 && vsz < 1024 * 1024 {
        error(format!("service({name}): vsz_limit is too low"));
    }
    if SINGLE_INSTANCE.contains(&name.as_str()) && process_limit > 1 {
        error(format!("service({name}): process_limit must be 1"));
    }
    let raw_user = service.user.as_str();
    if !user_from_default && !raw_user.is_empty() && !system.user_exists(raw_user) {
        error(format!("service({name}): User doesn't exist: {raw_user} (See service {name} {{ user }} setting)"));
    }
    if !service.group.is_empty() && !system.group_exists(&service.group) {
        error(format!(
            "service({name}): Group doesn't exist: {} (See service {name} {{ group }} setting)",
            service.group
        ));
    }
    // Space or comma separated, as the original and the shell read it.
    for group in service
        .extra_groups
        .split([' ', '\t', ','])
        .filter(|g| !g.is_empty())
    {
        if !system.group_exists(group) {
            error(format!("service({name}): Group doesn't exist: {group} (See service {name} {{ extra_groups }} setting)"));
        }
    }
    for listener in service.unix_listeners.iter().filter(|l| l.mode != 0) {
        if !listener.user.is_empty()
            && !from_default(Some(&listener.path), "user")
            && !system.user_exists(&listener.user)
        {
            error(format!(
                "service({name}): User doesn't exist: {} (See service {name} {{ unix_listener {} {{ user }} }} setting)",
                listener.user, listener.path
            ));
        }
        if !listener.group.is_empty()
            && !from_default(Some(&listener.path), "group")
            && !system.group_exists(&listener.group)
        {
            error(format!(
                "service({name}): Group doesn't exist: {} (See service {name} {{ unix_listener {} {{ group }} }} setting)",
                listener.group, listener.path
            ));
        }
    }
}

/// §3.1-3.3: the warnings about limits under maximum load.
fn load_warnings(settings: &Settings, system: &dyn System) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let enabled: Vec<&ServiceSettings> = settings
        .services
        .iter()
        .filter(|s| is_enabled(settings, s))
        .collect();
    let client_limit_of = |service: &ServiceSettings| match service.client_limit {
        0 => settings.global.default_client_limit,
        limit => limit,
    };
    // §3.1: every enabled protocol service holds a connection to auth per process, unless it
    // serves one connection per process; login services always count (the real program does).
    let mut auth_counted = Vec::new();
    for service in &enabled {
        if !service.protocol.is_empty()
            && (service.service_count != 1 || service.service_type == "login")
            && service.name != "imap-hibernate"
        {
            auth_counted.push((
                service.name.clone(),
                effective_process_limit(settings, service),
            ));
        }
    }
    if let Some(auth) = enabled.iter().find(|s| s.name == "auth") {
        let needed: u64 = auth_counted.iter().map(|(_, l)| u64::from(*l)).sum();
        let client_limit = client_limit_of(auth);
        if u64::from(client_limit) < needed {
            warnings.push(Warning::AuthClientLimit {
                client_limit,
                needed,
                counted: auth_counted,
            });
        }
    }
    // §3.2: anvil: the master's two pipes, every login process, and auth.
    let mut anvil_counted = Vec::new();
    for service in &enabled {
        if service.service_type == "login" || service.name == "auth" {
            anvil_counted.push((
                service.name.clone(),
                effective_process_limit(settings, service),
            ));
        }
    }
    if let Some(anvil) = enabled.iter().find(|s| s.service_type == "anvil") {
        let needed: u64 = 2 + anvil_counted
            .iter()
            .map(|(_, l)| u64::from(*l))
            .sum::<u64>();
        let client_limit = client_limit_of(anvil);
        if u64::from(client_limit) < needed {
            warnings.push(Warning::AnvilClientLimit {
                client_limit,
                needed,
                counted: anvil_counted,
            });
        }
    }
    // §3.3: the fd limit against the largest client_limit.
    let mut needed = u64::from(settings.global.default_client_limit);
    let mut because_of = None;
    for service in &enabled {
        if u64::from(service.client_limit) > needed {
            needed = u64::from(service.client_limit);
            because_of = Some(service.name.clone());
        }
    }
    let limit = system.fd_limit();
    if limit < needed {
        warnings.push(Warning::FdLimit {
            limit,
            needed,
            because_of,
        });
    }
    warnings
}
