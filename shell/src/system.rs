//! The operating system as the core's configuration module asks for it: files, the environment,
//! users and groups, limits.

use roost_core::config::{Env, Files, System};

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn read_to_string(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(path).map_err(|e| e.to_string())?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

/// The real environment.
pub struct RealEnv;

impl Env for RealEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// The real system.
pub struct RealSystem;

impl System for RealSystem {
    fn user_exists(&self, name: &str) -> bool {
        lookup_user(name).is_some()
    }

    fn group_exists(&self, name: &str) -> bool {
        lookup_group(name).is_some()
    }

    fn fd_limit(&self) -> u64 {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX)
    }
}

/// A user's uid and primary gid, by name or number.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        return Some((uid, uid));
    }
    let user = nix::unistd::User::from_name(name).ok()??;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// A group's gid, by name or number.
pub fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    Some(nix::unistd::Group::from_name(name).ok()??.gid.as_raw())
}

/// Whether the master runs as root (and so switches users for its children).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The name of the user the master runs as.
pub fn current_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::geteuid().to_string())
}

/// Hands the free pages inside the heap back to the kernel. Reading a configuration allocates
/// far more than the settings it leaves behind (the catalogue's every default service, as
/// written), and the master lives for months: without this, those pages stay resident.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only gives free memory back; every live allocation stays where it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// RLIMIT_NPROC as it is now (soft, hard); `None` when it cannot be read.
pub fn process_limit() -> Option<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).ok()
}

/// Reference §3.3: the master raises RLIMIT_NPROC to `wanted` (core's
/// `MasterConfig::process_limit_total`) when it is lower. As root both
/// limits go up; otherwise only the soft limit, as far as the hard one allows, and the shortfall
/// comes back as `Err((hard, wanted))` for a warning (the original dies there: a fatal
/// setrlimit() failure for a master that only runs as a user; roost serves on and throttles
/// whatever forks fail).
pub fn raise_process_limit(wanted: u64) -> Result<(), (u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NPROC) else {
        return Ok(());
    };
    if soft == RLIM_INFINITY || soft >= wanted {
        return Ok(());
    }
    if is_root() {
        let _ = setrlimit(Resource::RLIMIT_NPROC, wanted, hard.max(wanted));
        return Ok(());
    }
    let reachable = if hard == RLIM_INFINITY {
        wanted
    } else {
        wanted.min(hard)
    };
    let _ = setrlimit(Resource::RLIMIT_NPROC, reachable, hard);
    if reachable < wanted {
        return Err((hard, wanted));
    }
    Ok(())
}
