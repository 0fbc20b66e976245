//! roost's shell: binds the core's machines to the operating system with nix and mio.
//!
//! The library holds everything but `main`, so that the fuzz targets and third-party Rust
//! services can use the parsers and the child runtime.

pub mod builtin;
pub mod daemon;
pub mod demo;
pub mod fdplan;
pub mod inetd;
pub mod listen;
pub mod logging;
pub mod mail;
pub mod runtime;
pub mod spawn;
pub mod spawner;
pub mod system;

/// The embedded default configuration (DESIGN.md "The embedded default").
pub const DEFAULT_CONFIG: &str = include_str!("default.conf");

/// The system configuration file, read when it exists and no -c is given.
pub const SYSTEM_CONFIG: &str = "/etc/roost/roost.conf";

/// The base_dir of the embedded default: `$XDG_RUNTIME_DIR/roost`, else `/tmp/roost-UID`.
pub fn default_base_dir() -> String {
    match std::env::var("XDG_RUNTIME_DIR") {
        Ok(dir) if !dir.is_empty() && std::path::Path::new(&dir).is_dir() => format!("{dir}/roost"),
        _ => format!("/tmp/roost-{}", nix::unistd::geteuid()),
    }
}

/// Where the configuration comes from: `-c FILE`, else /etc/roost/roost.conf if it exists,
/// else the embedded default with its base_dir.
///
/// A relative FILE is taken from the directory roost was started in, once: the master moves
/// to its base_dir, and a reload must read the same file.
pub fn config_source(path: Option<&str>) -> daemon::Source {
    match path {
        Some(path) => daemon::Source::File(
            std::path::absolute(path)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.to_owned()),
        ),
        None if std::path::Path::new(SYSTEM_CONFIG).exists() => {
            daemon::Source::File(SYSTEM_CONFIG.to_owned())
        }
        None => daemon::Source::Embedded {
            text: format!(
                "base_dir = {}\n{}",
                default_base_dir(),
                DEFAULT_CONFIG.replace("$demo_dir", &demo::demo_dir().display().to_string())
            ),
        },
    }
}
