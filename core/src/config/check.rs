//! The checks of reference §3: errors that refuse a configuration (§3.4) and the startup warnings
//! (§3.1-3.3), with the original's texts. They work on the configuration as written, whether or
//! not roost runs each service, exactly as the original's do.

use std::collections::BTreeMap;
use std::fmt;

use super::derive::{
    effective_process_limit, effective_vsz_limit, enabled_protocols, is_enabled, resolve_path,
};
use super::{
    Config, ConfigError, ListenerType, Origin, ParseWarning, RawConfig, RawService, System,
};
use crate::settings::{ServiceSettings, Settings, VSZ_LIMIT_DEFAULT};
use crate::setup::ServiceType;

/// The lowest vsz_limit accepted (reference §3.4: non-zero and below 1 MiB is refused).
const VSZ_LIMIT_MIN: u64 = 1024 * 1024;

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

/// A check of reference §3.4 that refuses a configuration; `Display` is the original's text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `listen can't be set empty`.
    ListenEmpty,
    /// `first_valid_uid can't be larger than last_valid_uid` (or gid).
    FirstValidLarger {
        /// `uid` or `gid`.
        what: &'static str,
    },
    /// `default_login_user doesn't exist: X` (or default_internal_user).
    DefaultUserMissing {
        /// The setting.
        setting: &'static str,
        /// The user it names.
        user: String,
    },
    /// `No services defined`.
    NoServices,
    /// `Service #N is missing name` (N counts from 1, in doveconf's order).
    MissingName(usize),
    /// `Duplicate service name: X`.
    DuplicateServiceName(String),
    /// `service(X): Unknown service type: T`.
    UnknownServiceType {
        /// The service.
        service: String,
        /// The type as written.
        service_type: String,
    },
    /// `Multiple log services specified` (anvil, config).
    MultipleServices {
        /// The type.
        kind: &'static str,
    },
    /// `protocols: Unknown protocol: X`.
    UnknownProtocol(String),
    /// `duplicate listener: X` (a resolved path, or `port:address` as written), followed by
    /// the services that name it: the original's text alone left an operator to search every
    /// service for the other one.
    DuplicateListener {
        /// The listener.
        listener: String,
        /// The service that named it first.
        first: String,
        /// The service that named it again (may be the same).
        second: String,
    },
    /// `service(X): path must not be empty`.
    PathEmpty {
        /// The service.
        service: String,
    },
    /// `service(X): drop_priv_before_exec=yes can't be used with chroot`.
    DropPrivWithChroot {
        /// The service.
        service: String,
    },
    /// `service(X): process_min_avail is higher than process_limit`.
    MinAvailOverLimit {
        /// The service.
        service: String,
    },
    /// `default_vsz_limit is too low`: reported once, not once for every service that inherits
    /// it (a single bad line gave twenty identical errors, one per catalogue service).
    DefaultVszLimitTooLow,
    /// `service(X): vsz_limit is too low`.
    VszLimitTooLow {
        /// The service.
        service: String,
    },
    /// `service(X): process_limit must be 1`.
    ProcessLimitMustBeOne {
        /// The service.
        service: String,
    },
    /// `service(X): User doesn't exist: U (See SETTING setting)`.
    UnknownUser {
        /// The service.
        service: String,
        /// The user.
        user: String,
        /// Where it was set, for the hint.
        setting: String,
    },
    /// `service(X): Group doesn't exist: G (See SETTING setting)`.
    UnknownGroup {
        /// The service.
        service: String,
        /// The group.
        group: String,
        /// Where it was set, for the hint.
        setting: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ListenEmpty => f.write_str("listen can't be set empty"),
            Refusal::FirstValidLarger { what } => {
                write!(
                    f,
                    "first_valid_{what} can't be larger than last_valid_{what}"
                )
            }
            Refusal::DefaultUserMissing { setting, user } => {
                write!(f, "{setting} doesn't exist: {user}")
            }
            Refusal::NoServices => f.write_str("No services defined"),
            Refusal::MissingName(index) => write!(f, "Service #{index} is missing name"),
            Refusal::DuplicateServiceName(name) => write!(f, "Duplicate service name: {name}"),
            Refusal::UnknownServiceType {
                service,
                service_type,
            } => {
                write!(
                    f,
                    "service({service}): Unknown service type: {service_type}"
                )
            }
            Refusal::MultipleServices { kind } => write!(f, "Multiple {kind} services specified"),
            Refusal::UnknownProtocol(protocol) => {
                write!(f, "protocols: Unknown protocol: {protocol}")
            }
            Refusal::DuplicateListener {
                listener,
                first,
                second,
            } => {
                write!(f, "duplicate listener: {listener}")?;
                if first == second {
                    write!(f, " (twice in service {first})")
                } else {
                    write!(f, " (service {second}; also in service {first})")
                }
            }
            Refusal::PathEmpty { service } => {
                write!(f, "service({service}): path must not be empty")
            }
            Refusal::DropPrivWithChroot { service } => {
                write!(
                    f,
                    "service({service}): drop_priv_before_exec=yes can't be used with chroot"
                )
            }
            Refusal::MinAvailOverLimit { service } => {
                write!(
                    f,
                    "service({service}): process_min_avail is higher than process_limit"
                )
            }
            Refusal::DefaultVszLimitTooLow => f.write_str("default_vsz_limit is too low"),
            Refusal::VszLimitTooLow { service } => {
                write!(f, "service({service}): vsz_limit is too low")
            }
            Refusal::ProcessLimitMustBeOne { service } => {
                write!(f, "service({service}): process_limit must be 1")
            }
            Refusal::UnknownUser {
                service,
                user,
                setting,
            } => {
                write!(
                    f,
                    "service({service}): User doesn't exist: {user} (See {setting} setting)"
                )
            }
            Refusal::UnknownGroup {
                service,
                group,
                setting,
            } => {
                write!(
                    f,
                    "service({service}): Group doesn't exist: {group} (See {setting} setting)"
                )
            }
        }
    }
}

/// A refusal, placed by [`check`] once every check ran.
fn refused(refusal: Refusal) -> ConfigError {
    ConfigError::Check {
        refusal,
        origin: None,
    }
}

impl Refusal {
    /// What it is about, to find where that was written: the service (none for a global
    /// setting) and the setting (none for the service as a whole).
    fn subject(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Refusal::ListenEmpty => (None, Some("listen")),
            Refusal::FirstValidLarger { what } => (
                None,
                Some(if *what == "uid" {
                    "first_valid_uid"
                } else {
                    "first_valid_gid"
                }),
            ),
            Refusal::DefaultUserMissing { setting, .. } => (None, Some(setting)),
            Refusal::DefaultVszLimitTooLow => (None, Some("default_vsz_limit")),
            Refusal::UnknownProtocol(_) => (None, Some("protocols")),
            Refusal::UnknownServiceType { service, .. } => (Some(service), Some("type")),
            Refusal::DropPrivWithChroot { service } => {
                (Some(service), Some("drop_priv_before_exec"))
            }
            Refusal::MinAvailOverLimit { service } => (Some(service), Some("process_min_avail")),
            Refusal::VszLimitTooLow { service } => (Some(service), Some("vsz_limit")),
            Refusal::ProcessLimitMustBeOne { service } => (Some(service), Some("process_limit")),
            Refusal::UnknownUser {
                service, setting, ..
            }
            | Refusal::UnknownGroup {
                service, setting, ..
            } => {
                // `service x { user }` names a setting of the service itself; one of a
                // listener (`service x { unix_listener s { group } }`) is placed at the service.
                let key = setting
                    .strip_prefix(&format!("service {service} {{ "))
                    .and_then(|rest| rest.strip_suffix(" }"))
                    .filter(|key| !key.contains(' '));
                (Some(service), key)
            }
            Refusal::PathEmpty { service } => (Some(service), None),
            Refusal::DuplicateListener { second, .. } => (Some(second), None),
            Refusal::DuplicateServiceName(service) => (Some(service), None),
            Refusal::NoServices | Refusal::MissingName(_) | Refusal::MultipleServices { .. } => {
                (None, None)
            }
        }
    }
}

/// Where what `refusal` is about was written: its setting, else its service's first mention.
/// `None` for a default the configuration never wrote.
fn origin_of(raw: &RawConfig, refusal: &Refusal) -> Option<Origin> {
    match refusal.subject() {
        (Some(service), setting) => {
            let service = raw.services.iter().find(|s| s.name == service)?;
            setting
                .and_then(|key| service.settings.get(key)?.origin.clone())
                .or_else(|| service.mentioned.clone())
        }
        (None, Some(setting)) => raw.globals.get(setting)?.origin.clone(),
        (None, None) => None,
    }
}

/// Runs every check: the errors that refuse the configuration, or the warnings to show.
pub fn check(config: &Config, system: &dyn System) -> Result<Vec<Warning>, Vec<ConfigError>> {
    let settings = &config.settings;
    let mut errors = Vec::new();
    let mut error = |refusal: Refusal| errors.push(refused(refusal));
    let global = &settings.global;
    if global.listen.trim().is_empty() {
        error(Refusal::ListenEmpty);
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
            error(Refusal::FirstValidLarger { what });
        }
    }
    for (key, user) in [
        ("default_login_user", &global.default_login_user),
        ("default_internal_user", &global.default_internal_user),
    ] {
        if !system.user_exists(user) {
            error(Refusal::DefaultUserMissing {
                setting: key,
                user: user.clone(),
            });
        }
    }
    let default_vsz = global.default_vsz_limit;
    if default_vsz != 0 && default_vsz < VSZ_LIMIT_MIN {
        error(Refusal::DefaultVszLimitTooLow);
    }
    if settings.services.is_empty() {
        error(Refusal::NoServices);
    }
    let mut names = BTreeMap::new();
    let mut type_counts: BTreeMap<&str, u32> = BTreeMap::new();
    for (index, service) in settings.services.iter().enumerate() {
        if service.name.is_empty() {
            error(Refusal::MissingName(index + 1));
            continue;
        }
        if names.insert(service.name.as_str(), ()).is_some() {
            error(Refusal::DuplicateServiceName(service.name.clone()));
        }
        match ServiceType::from_word(&service.service_type) {
            None => error(Refusal::UnknownServiceType {
                service: service.name.clone(),
                service_type: service.service_type.clone(),
            }),
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
            error(Refusal::MultipleServices { kind });
        }
    }
    for protocol in enabled_protocols(settings) {
        if !settings.services.iter().any(|s| s.protocol == protocol) {
            error(Refusal::UnknownProtocol(protocol));
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
        check_service(settings, service, raw, system, &mut |refusal| {
            errors.push(refused(refusal))
        });
        for listener in service.unix_listeners.iter().chain(&service.fifo_listeners) {
            if listener.path.is_empty() {
                errors.push(refused(Refusal::PathEmpty {
                    service: service.name.clone(),
                }));
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
            if let Some(first) = listeners.insert(path.clone(), service.name.clone()) {
                errors.push(refused(Refusal::DuplicateListener {
                    listener: path,
                    first,
                    second: service.name.clone(),
                }));
            }
        }
        for listener in service.inet_listeners.iter().filter(|l| l.port != 0) {
            let key = format!("{}:{}", listener.port, listener.address);
            if let Some(first) = listeners.insert(key.clone(), service.name.clone()) {
                errors.push(refused(Refusal::DuplicateListener {
                    listener: key,
                    first,
                    second: service.name.clone(),
                }));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|error| match error {
                ConfigError::Check { refusal, .. } => ConfigError::Check {
                    origin: origin_of(&config.raw, &refusal),
                    refusal,
                },
                error => error,
            })
            .collect());
    }
    warnings.extend(load_warnings(settings, system));
    Ok(warnings)
}

fn check_service(
    settings: &Settings,
    service: &ServiceSettings,
    raw: Option<&RawService>,
    system: &dyn System,
    error: &mut dyn FnMut(Refusal),
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
        error(Refusal::DropPrivWithChroot {
            service: name.clone(),
        });
    }
    let process_limit = effective_process_limit(settings, service);
    if service.process_min_avail > process_limit {
        error(Refusal::MinAvailOverLimit {
            service: name.clone(),
        });
    }
    // A service that inherits default_vsz_limit is covered by the global check.
    let vsz = effective_vsz_limit(settings, service);
    if service.vsz_limit != VSZ_LIMIT_DEFAULT && vsz != 0 && vsz < VSZ_LIMIT_MIN {
        error(Refusal::VszLimitTooLow {
            service: name.clone(),
        });
    }
    if SINGLE_INSTANCE.contains(&name.as_str()) && process_limit > 1 {
        error(Refusal::ProcessLimitMustBeOne {
            service: name.clone(),
        });
    }
    let raw_user = service.user.as_str();
    if !user_from_default && !raw_user.is_empty() && !system.user_exists(raw_user) {
        error(Refusal::UnknownUser {
            service: name.clone(),
            user: raw_user.to_owned(),
            setting: format!("service {name} {{ user }}"),
        });
    }
    if !service.group.is_empty() && !system.group_exists(&service.group) {
        error(Refusal::UnknownGroup {
            service: name.clone(),
            group: service.group.clone(),
            setting: format!("service {name} {{ group }}"),
        });
    }
    // Space or comma separated, as the original and the shell read it.
    for group in service
        .extra_groups
        .split([' ', '\t', ','])
        .filter(|g| !g.is_empty())
    {
        if !system.group_exists(group) {
            error(Refusal::UnknownGroup {
                service: name.clone(),
                group: group.to_owned(),
                setting: format!("service {name} {{ extra_groups }}"),
            });
        }
    }
    for listener in service.unix_listeners.iter().filter(|l| l.mode != 0) {
        if !listener.user.is_empty()
            && !from_default(Some(&listener.path), "user")
            && !system.user_exists(&listener.user)
        {
            error(Refusal::UnknownUser {
                service: name.clone(),
                user: listener.user.clone(),
                setting: format!(
                    "service {name} {{ unix_listener {} {{ user }} }}",
                    listener.path
                ),
            });
        }
        if !listener.group.is_empty()
            && !from_default(Some(&listener.path), "group")
            && !system.group_exists(&listener.group)
        {
            error(Refusal::UnknownGroup {
                service: name.clone(),
                group: listener.group.clone(),
                setting: format!(
                    "service {name} {{ unix_listener {} {{ group }} }}",
                    listener.path
                ),
            });
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
