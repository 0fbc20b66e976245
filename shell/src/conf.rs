//! Reading the configuration from the real file system, and the embedded default.
//!
//! The core's `config` module is pure: it reads files through [`Files`], the environment through
//! [`Env`], and asks the running system through [`System`]. This module is those three for the
//! real machine, plus the choice of which configuration to run: `-c FILE`, else
//! `/etc/roost/roost.conf` when it exists, else the embedded default (DESIGN.md).

use roost_core::config::{self, Config, ConfigError, Env, Files, System};
use roost_core::settings::ServiceSettings;
use roost_core::setup::MasterConfig;

/// The configuration file read when no `-c` is given, if it exists.
pub const SYSTEM_CONFIG: &str = "/etc/roost/roost.conf";

/// The embedded default configuration (an inetd echo service on 127.0.0.1:1110).
pub const DEFAULT_CONF: &str = include_str!("default.conf");

/// The name under which the embedded default is reported.
pub const DEFAULT_NAME: &str = "(embedded default)";

/// The real file system.
pub struct FsFiles;

impl Files for FsFiles {
    fn read_to_string(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
    fn list_dir(&self, path: &str) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(path).map_err(|e| e.to_string())?;
        Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

/// The process environment, with the embedded default's own variables.
pub struct StdEnv;

impl Env for StdEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "ROOST_DEFAULT_BASE_DIR" => Some(default_base_dir()),
            _ => std::env::var(name).ok(),
        }
    }
}

/// The running system, for the checks.
pub struct RealSystem;

impl System for RealSystem {
    fn user_exists(&self, name: &str) -> bool {
        matches!(nix::unistd::User::from_name(name), Ok(Some(_)))
    }
    fn group_exists(&self, name: &str) -> bool {
        matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
    }
    fn fd_limit(&self) -> u64 {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
    }
}

/// `$XDG_RUNTIME_DIR/roost`, else `/tmp/roost-UID`.
pub fn default_base_dir() -> String {
    match std::env::var("XDG_RUNTIME_DIR") {
        Ok(dir) if !dir.is_empty() => format!("{dir}/roost"),
        _ => format!("/tmp/roost-{}", nix::unistd::geteuid()),
    }
}

/// Which configuration to read: the path given, the system file, or the embedded default.
pub fn choose(path: Option<&str>) -> Option<String> {
    match path {
        Some(p) => Some(p.to_owned()),
        None if std::path::Path::new(SYSTEM_CONFIG).exists() => Some(SYSTEM_CONFIG.to_owned()),
        None => None,
    }
}

/// Reads a configuration (a file, or the embedded default when `path` is None).
pub fn load(path: Option<&str>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => config::load(p, &FsFiles, &StdEnv),
        None => config::load_str(DEFAULT_NAME, DEFAULT_CONF, &FsFiles, &StdEnv),
    }
}

/// Reads and checks a configuration; errors as one text each (`FILE:LINE: text`).
pub fn load_checked(path: Option<&str>) -> Result<(Config, Vec<String>), Vec<String>> {
    let cfg = load(path).map_err(|e| vec![e.to_string()])?;
    match config::check(&cfg, &RealSystem) {
        Ok(warnings) => Ok((cfg, warnings.iter().map(ToString::to_string).collect())),
        Err(errors) => Err(errors.iter().map(ToString::to_string).collect()),
    }
}

/// The directory of the running roost binary.
pub fn self_exe() -> (String, String) {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/proc/self/exe".to_owned());
    let dir = std::path::Path::new(&exe)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_owned());
    (exe, dir)
}

/// Derives the master's configuration: services roost can run.
pub fn master_config(cfg: &Config) -> (MasterConfig, Vec<String>) {
    let (_, self_dir) = self_exe();
    let libexec = cfg.settings().global.libexec_dir.clone();
    let runnable = |s: &ServiceSettings| crate::spawn::runnable(&s.executable, &libexec, &self_dir);
    let (mc, left) = config::master_config(cfg.settings(), &runnable);
    (mc, left.iter().map(ToString::to_string).collect())
}
