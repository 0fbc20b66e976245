//! The configuration: the language of the seeds, the built-in catalogue of default services, the
//! typed settings, the checks and warnings of reference §3, doveconf-style printing, and the
//! effective configuration the master runs on.
//!
//! Pure: files are read through [`Files`], the environment through [`Env`], and what only the
//! system knows (users, groups, the fd limit) through [`System`]. The form as written
//! ([`RawConfig`]) is what `roost config` prints and what the checks count; the typed
//! [`Settings`] are derived from it, and the master's [`MasterConfig`] from those.

mod check;
mod derive;
mod glob;
mod parse;
mod print;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;

pub use check::{check, Refusal, Warning};
pub use derive::{master_config, print_effective, LeftOut};
pub use print::{print, PrintMode};

use crate::settings::{
    AuthDbSettings, FileListenerSettings, GlobalSettings, InetListenerSettings, ServiceSettings,
    Settings,
};
use value::{parse_bool, parse_mode, parse_port, parse_size, parse_time, parse_u32, ValueType};

/// Reads configuration files. The shell implements it with the file system; tests with a map.
pub trait Files {
    /// The whole text of a file.
    fn read_to_string(&self, path: &str) -> Result<String, String>;
    /// The names of the entries of a directory (not their paths), in any order.
    fn list_dir(&self, path: &str) -> Result<Vec<String>, String>;
}

/// The environment, for `$ENV:NAME`.
pub trait Env {
    /// The value of a variable, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// What only the running system knows, for the checks of reference §3.
pub trait System {
    /// Whether a user of this name exists.
    fn user_exists(&self, name: &str) -> bool;
    /// Whether a group of this name exists.
    fn group_exists(&self, name: &str) -> bool;
    /// The soft RLIMIT_NOFILE.
    fn fd_limit(&self) -> u64;
}

/// An empty environment.
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// Where a value or section was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: String,
    /// The line (the first, for joined lines).
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A configuration refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text could not be parsed, or a value is invalid: file and line.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// What.
        message: String,
    },
    /// A value without a place (a default, or a value given on the command line).
    #[error("{0}")]
    Invalid(String),
    /// A check of reference §3.4 failed; where the setting (or the service) it is about was
    /// written, when the configuration wrote it.
    #[error("{}{refusal}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Check {
        /// The check's text.
        refusal: Refusal,
        /// Where.
        origin: Option<Origin>,
    },
    /// The RON form could not be read.
    #[error("{file}:{line}:{column}: {message}")]
    Ron {
        /// The file.
        file: String,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// What.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn syntax(origin: &Origin, message: &str) -> ConfigError {
        ConfigError::Syntax {
            origin: origin.clone(),
            message: message.to_owned(),
        }
    }

    fn at(origin: &Option<Origin>, message: String) -> ConfigError {
        match origin {
            Some(origin) => ConfigError::Syntax {
                origin: origin.clone(),
                message,
            },
            None => ConfigError::Invalid(message),
        }
    }
}

/// A warning found while parsing (the ambiguous `#`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseWarning {
    /// Where.
    pub origin: Origin,
    /// What.
    pub message: String,
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// A value as written, and where (none for built-in defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawValue {
    /// The text (self-references expanded, quotes removed, other `$variables` kept).
    pub text: String,
    /// Where it was written; `None` for a default.
    pub origin: Option<Origin>,
    /// It was quoted: `$variables` in it are text, never expanded.
    pub literal: bool,
}

impl RawValue {
    fn default(text: &str) -> RawValue {
        RawValue {
            text: text.to_owned(),
            origin: None,
            literal: false,
        }
    }

    /// The value with `$variables` expanded, unless it was quoted or is a `<file` reference.
    fn expanded(
        &self,
        globals: &BTreeMap<String, String>,
        env: &dyn Env,
    ) -> Result<String, ConfigError> {
        if self.literal || self.text.starts_with('<') {
            Ok(self.text.clone())
        } else {
            expand(&self.text, globals, env, &self.origin)
        }
    }
}

/// The keys a service block accepts (an unknown key inside a service block is an error).
pub const SERVICE_KEYS: &[&str] = &[
    "chroot",
    "client_limit",
    "drop_priv_before_exec",
    "executable",
    "extra_groups",
    "foreign",
    "group",
    "idle_kill",
    "privileged_group",
    "process_limit",
    "process_min_avail",
    "protocol",
    "service_count",
    "type",
    "user",
    "vsz_limit",
];

/// Per-service defaults of a service that is not in the catalogue (reference §5.1). `foreign`,
/// roost's own, is not listed: it is shown only where it is set.
const SERVICE_DEFAULTS: &[(&str, &str)] = &[
    ("chroot", ""),
    ("client_limit", "0"),
    ("drop_priv_before_exec", "no"),
    ("executable", ""),
    ("extra_groups", ""),
    ("group", ""),
    ("idle_kill", "0"),
    ("privileged_group", ""),
    ("process_limit", "0"),
    ("process_min_avail", "0"),
    ("protocol", ""),
    ("service_count", "0"),
    ("type", ""),
    ("user", ""),
    ("vsz_limit", "18446744073709551615 B"),
];

/// The per-service settings that are not plain strings, for printing them as doveconf does.
const SERVICE_TYPES: &[(&str, ValueType)] = &[
    ("client_limit", ValueType::Number),
    ("drop_priv_before_exec", ValueType::Bool),
    ("foreign", ValueType::Bool),
    ("idle_kill", ValueType::Time),
    ("process_limit", ValueType::Number),
    ("process_min_avail", ValueType::Number),
    ("service_count", ValueType::Number),
    ("vsz_limit", ValueType::Size),
];

/// The global settings roost knows that are not plain strings (`ssl` is an enum, kept as
/// written; a global roost does not know is a string to it).
const GLOBAL_TYPES: &[(&str, ValueType)] = &[
    ("default_client_limit", ValueType::Number),
    ("default_idle_kill", ValueType::Time),
    ("default_process_limit", ValueType::Number),
    ("default_vsz_limit", ValueType::Size),
    ("first_valid_gid", ValueType::Number),
    ("first_valid_uid", ValueType::Number),
    ("last_valid_gid", ValueType::Number),
    ("last_valid_uid", ValueType::Number),
    ("shutdown_clients", ValueType::Bool),
    ("verbose_proctitle", ValueType::Bool),
];

fn type_in(table: &[(&str, ValueType)], key: &str) -> Option<ValueType> {
    table.iter().find(|(k, _)| *k == key).map(|(_, t)| *t)
}

/// The type of a global setting; `None` for a string.
pub(crate) fn global_type(key: &str) -> Option<ValueType> {
    type_in(GLOBAL_TYPES, key)
}

/// The type of a per-service setting; `None` for a string.
pub(crate) fn service_type(key: &str) -> Option<ValueType> {
    type_in(SERVICE_TYPES, key)
}

/// The three kinds of listener section.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListenerType {
    /// `unix_listener PATH { }`.
    Unix,
    /// `fifo_listener PATH { }`.
    Fifo,
    /// `inet_listener NAME { }`.
    Inet,
}

impl ListenerType {
    fn from_section(kind: &str) -> Option<ListenerType> {
        match kind {
            "unix_listener" => Some(ListenerType::Unix),
            "fifo_listener" => Some(ListenerType::Fifo),
            "inet_listener" => Some(ListenerType::Inet),
            _ => None,
        }
    }

    /// The section keyword.
    pub fn section(self) -> &'static str {
        match self {
            ListenerType::Unix => "unix_listener",
            ListenerType::Fifo => "fifo_listener",
            ListenerType::Inet => "inet_listener",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            ListenerType::Unix | ListenerType::Fifo => &["group", "mode", "user"],
            ListenerType::Inet => &["address", "haproxy", "port", "reuse_port", "ssl"],
        }
    }

    /// The type of a listener setting; `None` for a string.
    pub(crate) fn value_type(self, key: &str) -> Option<ValueType> {
        match (self, key) {
            (ListenerType::Unix | ListenerType::Fifo, "mode") => Some(ValueType::Mode),
            (ListenerType::Inet, "port") => Some(ValueType::Port),
            (ListenerType::Inet, "ssl" | "haproxy" | "reuse_port") => Some(ValueType::Bool),
            _ => None,
        }
    }

    fn defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ListenerType::Unix | ListenerType::Fifo => {
                &[("group", ""), ("mode", "0600"), ("user", "")]
            }
            ListenerType::Inet => &[
                ("address", ""),
                ("haproxy", "no"),
                ("port", "0"),
                ("reuse_port", "no"),
                ("ssl", "no"),
            ],
        }
    }
}

/// A listener as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawListener {
    /// Its kind.
    pub listener_type: ListenerType,
    /// Its path (unix, fifo) or name (inet; may be empty).
    pub name: String,
    /// Its settings, defaults included.
    pub settings: BTreeMap<String, RawValue>,
    /// Where the configuration first named it; `None` for a default listener.
    pub origin: Option<Origin>,
}

impl RawListener {
    fn new(listener_type: ListenerType, name: &str, origin: Option<Origin>) -> RawListener {
        RawListener {
            listener_type,
            name: name.to_owned(),
            settings: listener_type
                .defaults()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), RawValue::default(v)))
                .collect(),
            origin,
        }
    }
}

/// A service as written: the catalogue's defaults, modified by the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawService {
    /// Its name.
    pub name: String,
    /// Its settings, defaults included.
    pub settings: BTreeMap<String, RawValue>,
    /// Its listeners.
    pub listeners: Vec<RawListener>,
    /// Where the configuration first named it; `None` if it did not.
    pub mentioned: Option<Origin>,
    /// Whether it is one of the catalogue's.
    pub built_in: bool,
}

impl RawService {
    fn new(name: &str) -> RawService {
        RawService {
            name: name.to_owned(),
            settings: SERVICE_DEFAULTS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), RawValue::default(v)))
                .collect(),
            listeners: Vec::new(),
            mentioned: None,
            built_in: false,
        }
    }

    fn text(&self, key: &str) -> &str {
        self.settings
            .get(key)
            .map(|v| v.text.as_str())
            .unwrap_or("")
    }
}

/// A section roost does not interpret (`protocol`, `passdb`, `namespace`, ...), kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generic {
    /// The section keyword.
    pub kind: String,
    /// Its name (may be empty).
    pub name: String,
    /// Its settings and subsections, in the order first written.
    pub entries: Vec<GenericEntry>,
}

impl Generic {
    fn new(kind: &str, name: &str) -> Generic {
        Generic {
            kind: kind.to_owned(),
            name: name.to_owned(),
            entries: Vec::new(),
        }
    }
}

/// One entry of a generic section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GenericEntry {
    /// `key = value`.
    Setting(String, RawValue),
    /// A nested section.
    Section(Generic),
}

/// A configuration as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// Global settings written in the file (defaults are in [`global_defaults`]).
    pub globals: BTreeMap<String, RawValue>,
    /// Every service: the catalogue's, then new ones.
    pub services: Vec<RawService>,
    /// The order in which the file first named services.
    pub mention_order: Vec<String>,
    /// Sections roost does not interpret.
    pub sections: Vec<Generic>,
    /// Warnings found while parsing.
    pub warnings: Vec<ParseWarning>,
}

/// Dovecot 2.3's global settings, one a line: `name = default`, or the name alone where
/// doveconf shows no default (the file's head says where they come from).
const DOVECOT_GLOBALS: &str = include_str!("dovecot-globals.txt");

/// The line of DOVECOT_GLOBALS for KEY: `Some(None)` for a name alone, `Some(Some(default))`.
fn dovecot_global(key: &str) -> Option<Option<&'static str>> {
    DOVECOT_GLOBALS.lines().find_map(|line| {
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        if name != key {
            return None;
        }
        Some(rest.strip_prefix('=').map(str::trim))
    })
}

/// Dovecot 2.3's default of a global setting roost does not use, as doveconf prints it.
pub fn dovecot_default(key: &str) -> Option<&'static str> {
    dovecot_global(key).flatten()
}

/// Global names of older versions that Dovecot 2.3 still reads, converting or dropping them,
/// and what became of each. roost converts none of them: it reads the file and says so.
const OBSOLETE_GLOBALS: &[(&str, &str)] = &[
    ("auth_chroot", "replaced by service auth { chroot }"),
    ("auth_count", "removed"),
    ("auth_executable", "replaced by service auth { executable }"),
    (
        "auth_process_size",
        "replaced by service auth { vsz_limit }",
    ),
    ("auth_user", "replaced by service auth { user }"),
    ("dbox_rotate_days", "removed"),
    ("dbox_rotate_min_size", "removed"),
    ("dbox_rotate_size", "renamed mdbox_rotate_size"),
    ("director_consistent_hashing", "removed"),
    ("fsync_disable", "replaced by mail_fsync"),
    ("login_chroot", "replaced by service *-login { chroot }"),
    ("login_dir", "removed"),
    (
        "login_executable",
        "replaced by service *-login { executable }",
    ),
    (
        "login_max_connections",
        "replaced by service *-login { client_limit }",
    ),
    (
        "login_max_processes_count",
        "replaced by service *-login { process_limit }",
    ),
    (
        "login_process_per_connection",
        "replaced by service *-login { service_count }",
    ),
    (
        "login_process_size",
        "replaced by service *-login { vsz_limit }",
    ),
    (
        "login_processes_count",
        "replaced by service *-login { process_min_avail }",
    ),
    ("login_user", "replaced by service *-login { user }"),
    ("mail", "the old name of mail_location"),
    (
        "mail_drop_priv_before_exec",
        "replaced by service { drop_priv_before_exec }",
    ),
    ("mail_executable", "replaced by service { executable }"),
    ("mail_log_max_lines_per_sec", "removed"),
    ("mail_process_size", "replaced by service { vsz_limit }"),
    ("maildir_copy_preserve_filename", "removed"),
    (
        "max_mail_processes",
        "replaced by service { process_limit }",
    ),
    ("sieve", "moved into plugin { }"),
    ("sieve_storage", "moved into plugin { sieve_dir }"),
    ("ssl_ca_file", "replaced by ssl_ca = <file"),
    ("ssl_cert_file", "replaced by ssl_cert = <file"),
    ("ssl_dh_parameters_length", "no longer needed"),
    ("ssl_disable", "replaced by ssl"),
    ("ssl_key_file", "replaced by ssl_key = <file"),
    (
        "ssl_listen",
        "replaced by service { inet_listener { address } }",
    ),
    ("ssl_parameters_regenerate", "no longer needed"),
    ("ssl_protocols", "replaced by ssl_min_protocol"),
];

/// What a top-level setting name is to roost.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum GlobalName {
    /// roost's own, or Dovecot 2.3's (kept and shown if roost does not use it).
    Known,
    /// A name of an older Dovecot, and what became of it.
    Obsolete(&'static str),
    /// Nobody's: a typo.
    Unknown,
}

pub(crate) fn global_name(key: &str) -> GlobalName {
    if let Some((_, became)) = OBSOLETE_GLOBALS.iter().find(|(name, _)| *name == key) {
        return GlobalName::Obsolete(became);
    }
    if key.starts_with("mail_cache_compress_") {
        return GlobalName::Obsolete("renamed mail_cache_purge_*");
    }
    if dovecot_global(key).is_some() || global_defaults().contains_key(key) {
        GlobalName::Known
    } else {
        GlobalName::Unknown
    }
}

/// roost's global defaults (reference §5.1, with the users of DESIGN.md "Users").
pub fn global_defaults() -> BTreeMap<&'static str, &'static str> {
    [
        ("base_dir", "/run/roost"),
        ("debug_log_path", ""),
        ("default_client_limit", "1000"),
        ("default_idle_kill", "1 mins"),
        ("default_internal_group", "nogroup"),
        ("default_internal_user", "nobody"),
        ("default_login_user", "nobody"),
        ("default_process_limit", "100"),
        ("default_vsz_limit", "256 M"),
        ("first_valid_gid", "1"),
        ("first_valid_uid", "500"),
        ("haproxy_trusted_networks", ""),
        ("import_environment", "TZ CORE_OUTOFMEM CORE_ERROR"),
        ("info_log_path", ""),
        ("instance_name", "roost"),
        ("last_valid_gid", "0"),
        ("last_valid_uid", "0"),
        ("libexec_dir", ""),
        ("listen", "*, ::"),
        ("log_path", "syslog"),
        ("log_timestamp", "%b %d %H:%M:%S "),
        ("protocols", "imap pop3 lmtp"),
        ("shutdown_clients", "yes"),
        ("ssl", "yes"),
        ("ssl_cert", ""),
        ("ssl_key", ""),
        ("state_dir", "/var/lib/roost"),
        ("syslog_facility", "mail"),
        ("verbose_proctitle", "no"),
    ]
    .into_iter()
    .collect()
}

/// Global settings whose value is a secret, hidden by `roost config` unless asked.
pub const SECRET_SETTINGS: &[&str] = &["ssl_key", "ssl_dh", "ssl_key_password", "password"];

/// The built-in catalogue of default services, in the configuration syntax.
const CATALOGUE: &str = include_str!("catalogue.conf");

/// A configuration that was read: as written, and typed.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from (or a name for text given directly).
    pub path: String,
    /// As written.
    pub raw: RawConfig,
    /// Typed.
    pub settings: Settings,
}

impl Config {
    /// The typed settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Reads a configuration file: the seeds' syntax, or RON when the name ends in `.ron`.
pub fn load(path: &str, files: &dyn Files, env: &dyn Env) -> Result<Config, ConfigError> {
    let text = files.read_to_string(path).map_err(|error| {
        ConfigError::Invalid(format!("Can't read configuration {path}: {error}"))
    })?;
    load_str(path, &text, files, env)
}

/// Reads a configuration from text; `name` is used in messages and to resolve relative includes.
pub fn load_str(
    name: &str,
    text: &str,
    files: &dyn Files,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    if name.ends_with(".ron") {
        return load_ron(name, text);
    }
    let mut raw = RawConfig {
        services: parse::parse_catalogue(files, CATALOGUE)?
            .into_iter()
            .map(|service| RawService {
                built_in: true,
                ..service
            })
            .collect(),
        ..RawConfig::default()
    };
    raw.warnings.clear();
    let mut parser = parse::Parser::new(files, raw);
    parser.parse_text(name, text)?;
    let raw = parser.finish()?;
    let settings = typed(&raw, env)?;
    Ok(Config {
        path: name.to_owned(),
        raw,
        settings,
    })
}

/// Reads the RON form of [`Settings`].
fn load_ron(name: &str, text: &str) -> Result<Config, ConfigError> {
    let settings: Settings = ron::from_str(text).map_err(|error| ConfigError::Ron {
        file: name.to_owned(),
        line: error.span.start.line,
        column: error.span.start.col,
        message: error.code.to_string(),
    })?;
    let raw = raw_from_settings(&settings);
    Ok(Config {
        path: name.to_owned(),
        raw,
        settings,
    })
}

/// The RON form of typed settings (how children and the simulator receive them).
pub fn to_ron(settings: &Settings) -> String {
    ron::ser::to_string_pretty(settings, ron::ser::PrettyConfig::new())
        .expect("Settings holds only strings, numbers and lists, which RON always encodes")
}

/// Expands `$name` words (other settings' values) and `$ENV:NAME` in a value.
fn expand(
    text: &str,
    globals: &BTreeMap<String, String>,
    env: &dyn Env,
    origin: &Option<Origin>,
) -> Result<String, ConfigError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        if let Some(name) = word.strip_prefix("$ENV:") {
            words.push(env.var(name).unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            match globals.get(name) {
                Some(value) => words.push(value.clone()),
                None => {
                    return Err(ConfigError::at(
                        origin,
                        format!("Unknown variable: ${name}"),
                    ))
                }
            }
        } else {
            words.push(word.to_owned());
        }
    }
    Ok(words.join(" "))
}

/// Derives the typed settings from the configuration as written.
fn typed(raw: &RawConfig, env: &dyn Env) -> Result<Settings, ConfigError> {
    // Global values, defaults first; `$name` references inside globals resolve against the
    // defaults and earlier globals.
    let mut text: BTreeMap<String, String> = global_defaults()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut origins: BTreeMap<String, Option<Origin>> = BTreeMap::new();
    for (key, value) in &raw.globals {
        origins.insert(key.clone(), value.origin.clone());
        text.insert(key.clone(), value.text.clone());
    }
    let mut globals = text.clone();
    for (key, value) in &text {
        let raw_value = raw
            .globals
            .get(key)
            .cloned()
            .unwrap_or_else(|| RawValue::default(value));
        globals.insert(key.clone(), raw_value.expanded(&text, env)?);
    }
    let get = |key: &str| globals.get(key).cloned().unwrap_or_default();
    let origin = |key: &str| origins.get(key).cloned().flatten();
    let typed_error =
        |key: &str, error: String| ConfigError::at(&origin(key), format!("{key}: {error}"));
    let u32_of = |key: &str| parse_u32(&get(key)).map_err(|e| typed_error(key, e));
    let bool_of = |key: &str| parse_bool(&get(key)).map_err(|e| typed_error(key, e));
    let known = global_defaults();
    let global = GlobalSettings {
        base_dir: get("base_dir").trim_end_matches('/').to_owned(),
        state_dir: get("state_dir"),
        libexec_dir: get("libexec_dir"),
        instance_name: get("instance_name"),
        protocols: get("protocols"),
        listen: get("listen"),
        ssl: get("ssl"),
        ssl_cert: get("ssl_cert"),
        ssl_key: get("ssl_key"),
        default_internal_user: get("default_internal_user"),
        default_internal_group: get("default_internal_group"),
        default_login_user: get("default_login_user"),
        default_process_limit: u32_of("default_process_limit")?,
        default_client_limit: u32_of("default_client_limit")?,
        default_idle_kill: parse_time(&get("default_idle_kill"))
            .map_err(|e| typed_error("default_idle_kill", e))?,
        default_vsz_limit: parse_size(&get("default_vsz_limit"))
            .map_err(|e| typed_error("default_vsz_limit", e))?,
        shutdown_clients: bool_of("shutdown_clients")?,
        verbose_proctitle: bool_of("verbose_proctitle")?,
        import_environment: get("import_environment"),
        log_path: get("log_path"),
        info_log_path: get("info_log_path"),
        debug_log_path: get("debug_log_path"),
        syslog_facility: get("syslog_facility"),
        log_timestamp: get("log_timestamp"),
        haproxy_trusted_networks: get("haproxy_trusted_networks"),
        other: raw
            .globals
            .iter()
            .filter(|(k, _)| !known.contains_key(k.as_str()))
            .map(|(k, _)| (k.clone(), get(k)))
            .collect(),
    };
    for key in [
        "first_valid_uid",
        "last_valid_uid",
        "first_valid_gid",
        "last_valid_gid",
    ] {
        u32_of(key)?;
    }
    if !["yes", "no", "required"].contains(&global.ssl.as_str()) {
        return Err(typed_error(
            "ssl",
            format!("Invalid value: {} (use yes, no or required)", global.ssl),
        ));
    }
    let mut services = Vec::new();
    for service in &raw.services {
        services.push(typed_service(service, &globals, env)?);
    }
    let auth_dbs = |kind: &str| -> Result<Vec<AuthDbSettings>, ConfigError> {
        let mut dbs = Vec::new();
        for section in raw.sections.iter().filter(|s| s.kind == kind) {
            let mut db = AuthDbSettings::default();
            for entry in &section.entries {
                if let GenericEntry::Setting(key, value) = entry {
                    match key.as_str() {
                        "driver" => db.driver = value.expanded(&globals, env)?,
                        "args" => db.args = value.expanded(&globals, env)?,
                        _ => {}
                    }
                }
            }
            dbs.push(db);
        }
        Ok(dbs)
    };
    Ok(Settings {
        global,
        services,
        passdbs: auth_dbs("passdb")?,
        userdbs: auth_dbs("userdb")?,
    })
}

fn typed_service(
    raw: &RawService,
    globals: &BTreeMap<String, String>,
    env: &dyn Env,
) -> Result<ServiceSettings, ConfigError> {
    let value = |key: &str| -> Result<(String, Option<Origin>), ConfigError> {
        let v = raw
            .settings
            .get(key)
            .cloned()
            .unwrap_or_else(|| RawValue::default(""));
        Ok((v.expanded(globals, env)?, v.origin))
    };
    let err = |origin: Option<Origin>, key: &str, error: String| {
        ConfigError::at(&origin, format!("service({}): {key}: {error}", raw.name))
    };
    macro_rules! typed {
        ($key:literal, $parse:expr) => {{
            let (text, origin) = value($key)?;
            $parse(&text).map_err(|e| err(origin, $key, e))?
        }};
    }
    let string = |key: &str| value(key).map(|(text, _)| text);
    let mut unix_listeners = Vec::new();
    let mut fifo_listeners = Vec::new();
    let mut inet_listeners = Vec::new();
    for listener in &raw.listeners {
        let lvalue = |key: &str| -> Result<(String, Option<Origin>), ConfigError> {
            let v = listener
                .settings
                .get(key)
                .cloned()
                .unwrap_or_else(|| RawValue::default(""));
            Ok((v.expanded(globals, env)?, v.origin))
        };
        let lerr = |origin: Option<Origin>, key: &str, error: String| {
            ConfigError::at(
                &origin,
                format!(
                    "service({}): {} {}: {key}: {error}",
                    raw.name,
                    listener.listener_type.section(),
                    listener.name
                ),
            )
        };
        match listener.listener_type {
            ListenerType::Unix | ListenerType::Fifo => {
                let (mode_text, mode_origin) = lvalue("mode")?;
                let file = FileListenerSettings {
                    path: listener.name.clone(),
                    mode: parse_mode(&mode_text).map_err(|e| lerr(mode_origin, "mode", e))?,
                    user: lvalue("user")?.0,
                    group: lvalue("group")?.0,
                };
                if listener.listener_type == ListenerType::Unix {
                    unix_listeners.push(file);
                } else {
                    fifo_listeners.push(file);
                }
            }
            ListenerType::Inet => {
                let (port, port_origin) = lvalue("port")?;
                let flag = |key: &str| -> Result<bool, ConfigError> {
                    let (text, origin) = lvalue(key)?;
                    parse_bool(&text).map_err(|e| lerr(origin, key, e))
                };
                inet_listeners.push(InetListenerSettings {
                    name: listener.name.clone(),
                    address: lvalue("address")?.0,
                    port: parse_port(&port).map_err(|e| lerr(port_origin, "port", e))?,
                    ssl: flag("ssl")?,
                    haproxy: flag("haproxy")?,
                    reuse_port: flag("reuse_port")?,
                });
            }
        }
    }
    let foreign = match raw.settings.get("foreign") {
        Some(v) => parse_bool(&v.text).map_err(|e| err(v.origin.clone(), "foreign", e))?,
        None => false,
    };
    Ok(ServiceSettings {
        name: raw.name.clone(),
        executable: string("executable")?,
        service_type: string("type")?,
        protocol: string("protocol")?,
        user: string("user")?,
        group: string("group")?,
        extra_groups: string("extra_groups")?,
        privileged_group: string("privileged_group")?,
        chroot: string("chroot")?,
        drop_priv_before_exec: typed!("drop_priv_before_exec", parse_bool),
        client_limit: typed!("client_limit", parse_u32),
        service_count: typed!("service_count", parse_u32),
        process_limit: typed!("process_limit", parse_u32),
        process_min_avail: typed!("process_min_avail", parse_u32),
        idle_kill: typed!("idle_kill", parse_time),
        vsz_limit: typed!("vsz_limit", parse_size),
        foreign,
        unix_listeners,
        fifo_listeners,
        inet_listeners,
    })
}

/// The as-written form of typed settings (for printing a RON configuration).
fn raw_from_settings(settings: &Settings) -> RawConfig {
    use value::{format_bool, format_mode, format_size, format_time};
    let g = &settings.global;
    let yes_no = |b: bool| format_bool(b).to_owned();
    let mut globals: BTreeMap<String, RawValue> = [
        ("base_dir", g.base_dir.clone()),
        ("state_dir", g.state_dir.clone()),
        ("libexec_dir", g.libexec_dir.clone()),
        ("instance_name", g.instance_name.clone()),
        ("protocols", g.protocols.clone()),
        ("listen", g.listen.clone()),
        ("ssl", g.ssl.clone()),
        ("ssl_cert", g.ssl_cert.clone()),
        ("ssl_key", g.ssl_key.clone()),
        ("default_internal_user", g.default_internal_user.clone()),
        ("default_internal_group", g.default_internal_group.clone()),
        ("default_login_user", g.default_login_user.clone()),
        ("default_process_limit", g.default_process_limit.to_string()),
        ("default_client_limit", g.default_client_limit.to_string()),
        ("default_idle_kill", format_time(g.default_idle_kill)),
        ("default_vsz_limit", format_size(g.default_vsz_limit)),
        ("shutdown_clients", yes_no(g.shutdown_clients)),
        ("verbose_proctitle", yes_no(g.verbose_proctitle)),
        ("import_environment", g.import_environment.clone()),
        ("log_path", g.log_path.clone()),
        ("info_log_path", g.info_log_path.clone()),
        ("debug_log_path", g.debug_log_path.clone()),
        ("syslog_facility", g.syslog_facility.clone()),
        ("log_timestamp", g.log_timestamp.clone()),
        (
            "haproxy_trusted_networks",
            g.haproxy_trusted_networks.clone(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), RawValue::default(&v)))
    .collect();
    for (k, v) in &g.other {
        globals.insert(k.clone(), RawValue::default(v));
    }
    let services = settings
        .services
        .iter()
        .map(|s| {
            let mut raw = RawService::new(&s.name);
            for (k, v) in [
                ("executable", s.executable.clone()),
                ("type", s.service_type.clone()),
                ("protocol", s.protocol.clone()),
                ("user", s.user.clone()),
                ("group", s.group.clone()),
                ("extra_groups", s.extra_groups.clone()),
                ("privileged_group", s.privileged_group.clone()),
                ("chroot", s.chroot.clone()),
                ("drop_priv_before_exec", yes_no(s.drop_priv_before_exec)),
                ("client_limit", s.client_limit.to_string()),
                ("service_count", s.service_count.to_string()),
                ("process_limit", s.process_limit.to_string()),
                ("process_min_avail", s.process_min_avail.to_string()),
                ("idle_kill", format_time(s.idle_kill)),
                ("vsz_limit", format_size(s.vsz_limit)),
            ] {
                raw.settings.insert(k.to_owned(), RawValue::default(&v));
            }
            if s.foreign {
                raw.settings
                    .insert("foreign".to_owned(), RawValue::default("yes"));
            }
            for (listener_type, list) in [
                (ListenerType::Unix, &s.unix_listeners),
                (ListenerType::Fifo, &s.fifo_listeners),
            ] {
                for l in list {
                    let mut listener = RawListener::new(listener_type, &l.path, None);
                    listener
                        .settings
                        .insert("mode".to_owned(), RawValue::default(&format_mode(l.mode)));
                    listener
                        .settings
                        .insert("user".to_owned(), RawValue::default(&l.user));
                    listener
                        .settings
                        .insert("group".to_owned(), RawValue::default(&l.group));
                    raw.listeners.push(listener);
                }
            }
            for l in &s.inet_listeners {
                let mut listener = RawListener::new(ListenerType::Inet, &l.name, None);
                for (k, v) in [
                    ("address", l.address.clone()),
                    ("port", l.port.to_string()),
                    ("ssl", yes_no(l.ssl)),
                    ("haproxy", yes_no(l.haproxy)),
                    ("reuse_port", yes_no(l.reuse_port)),
                ] {
                    listener
                        .settings
                        .insert(k.to_owned(), RawValue::default(&v));
                }
                raw.listeners.push(listener);
            }
            raw.built_in = false;
            raw
        })
        .collect();
    let mut sections = Vec::new();
    for (kind, dbs) in [("passdb", &settings.passdbs), ("userdb", &settings.userdbs)] {
        for db in dbs {
            let mut section = Generic::new(kind, "");
            for (key, value) in [("driver", &db.driver), ("args", &db.args)] {
                section.entries.push(GenericEntry::Setting(
                    key.to_owned(),
                    RawValue::default(value),
                ));
            }
            sections.push(section);
        }
    }
    RawConfig {
        globals,
        services,
        sections,
        ..RawConfig::default()
    }
}

/// An in-memory file system, for tests and for embedded configurations.
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles {
    /// Path → text.
    pub files: BTreeMap<String, String>,
}

impl MemoryFiles {
    /// Files from (path, text) pairs.
    pub fn new<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> MemoryFiles {
        MemoryFiles {
            files: files
                .into_iter()
                .map(|(p, t)| (p.to_owned(), t.to_owned()))
                .collect(),
        }
    }
}

impl Files for MemoryFiles {
    fn read_to_string(&self, path: &str) -> Result<String, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "No such file or directory".to_owned())
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>, String> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let names: Vec<String> = self
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect();
        if names.is_empty() && !self.files.keys().any(|p| p.starts_with(&prefix)) {
            return Err("No such file or directory".to_owned());
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests;
