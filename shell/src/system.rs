//! The operating system as the core's configuration module asks for it: files, the environment,
//! users and groups, limits.

use roost_core::config::{Env, Files, System};

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn read_to_string(&self, path: &str) -> Result<String, String> {
        config_text(std::fs::read(path).map_err(|e| e.to_string())?)
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(path).map_err(|e| e.to_string())?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

/// A configuration file's text. It is UTF-8, but a whole-line comment may be in an older
/// encoding (the Latin-1 comments of an old European configuration, which Dovecot, reading
/// bytes, accepts): such a line is read with its odd bytes replaced. Any other line that is
/// not UTF-8 is an error that names it.
fn config_text(bytes: Vec<u8>) -> Result<String, String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(error) => error.into_bytes(),
    };
    let mut text = String::with_capacity(bytes.len());
    for (index, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(line) => text.push_str(line),
            Err(_) if line.trim_ascii_start().starts_with(b"#") => {
                text.push_str(&String::from_utf8_lossy(line));
            }
            Err(error) => {
                return Err(format!(
                    "line {} is not UTF-8 (byte {} of the line is 0x{:02x})",
                    index + 1,
                    error.valid_up_to() + 1,
                    line[error.valid_up_to()]
                ))
            }
        }
    }
    Ok(text)
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

/// Unmaps the pages of code and read-only data the master has touched so far, and returns how
/// many bytes of mappings it let go of. Start-up and reload run far more code (parsing, checks,
/// listener set-up) than serving does, and every page they touched stays in the master's
/// resident set for its lifetime; afterwards only what serving touches comes back, on first use.
///
/// Only private file mappings that are not writable and hold no page of their own, resident or
/// swapped out (smaps' `Anonymous: 0 kB` and `Swap: 0 kB`), are let go: each of their pages is
/// the file's page-cache page, so nothing is lost, exactly as when the kernel reclaims them
/// under memory pressure. Relocated data (`.data.rel.ro`, `.got`) has its own pages and is
/// kept, even while they are swapped out.
pub fn release_code_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, end) in unshared_file_mappings(&smaps) {
        // SAFETY: the range is one whole mapping of this process whose every page equals its
        // file's (it is private, read-only, and has no page of its own in memory or in swap;
        // being read-only, it cannot gain one before the call), so MADV_DONTNEED only
        // unmaps them and the next access faults the same bytes back in. The master is single-
        // threaded, so no other thread can make the mapping writable in between.
        let done =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if done == 0 {
            released += end - start;
        }
    }
    Ok(released)
}

/// The (start, end) of each mapping in SMAPS that `release_code_pages` may let go: backed by a
/// file, private, not writable, resident, and with no anonymous page in memory or in swap (a
/// mapping whose counts smaps does not show is kept).
fn unshared_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    struct Mapping {
        range: (usize, usize),
        eligible: bool,
        resident: bool,
        anonymous_kib: Option<u64>,
        swap_kib: Option<u64>,
    }
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    let mut close = |mapping: Option<Mapping>| {
        if let Some(m) = mapping.filter(|m| {
            m.eligible && m.resident && m.anonymous_kib == Some(0) && m.swap_kib == Some(0)
        }) {
            found.push(m.range);
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            close(current.take());
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            let perms = words.next().unwrap_or("").as_bytes();
            let path = words.nth(3).unwrap_or("");
            current = Some(Mapping {
                range: (start, end),
                eligible: perms.len() == 4
                    && perms[0] == b'r'
                    && perms[1] == b'-'
                    && perms[3] == b'p'
                    && path.starts_with('/'),
                resident: false,
                anonymous_kib: None,
                swap_kib: None,
            });
        } else if let Some(mapping) = current.as_mut() {
            let kib = words.next().and_then(|n| n.parse::<u64>().ok());
            match (first, kib) {
                ("Rss:", Some(kib)) => mapping.resident = kib > 0,
                ("Anonymous:", Some(kib)) => mapping.anonymous_kib = Some(kib),
                ("Swap:", Some(kib)) => mapping.swap_kib = Some(kib),
                _ => {}
            }
        }
    }
    close(current);
    found
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

/// Goes to the background (reference §4.1 step 12), in a new session with stdin and stdout on
/// /dev/null. The parent does not return: it waits until the child reports that it has started
/// (one byte on the returned pipe, [`report_started`]) and exits 0, or until the child exits
/// first and exits with its status, so that whoever started roost (an init script, systemd's
/// `Type=forking`) sees a failed start as one. The child gets the pipe's write end
/// (close-on-exec: no process it starts keeps it).
pub fn daemonize() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::unistd::{fork, ForkResult};
    let (started_r, started_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the master has one thread; the parent only reads, waits and exits.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(started_w);
            let mut byte = [0u8; 1];
            loop {
                match nix::unistd::read(&started_r, &mut byte) {
                    Ok(1) => std::process::exit(0),
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => break,
                }
            }
            // The child exited (or is exiting) before it started: its status is ours.
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => 89,
            };
            std::process::exit(code)
        }
        ForkResult::Child => {
            nix::unistd::setsid()?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&null)?;
            Ok(started_w)
        }
    }
}

/// Tells the parent [`daemonize`] left waiting that the master has started.
pub fn report_started(started: std::os::fd::OwnedFd) {
    let _ = nix::unistd::write(&started, &[0]);
}

/// A copy of stderr as it is now (close-on-exec), to write to after stderr itself moved.
pub fn stderr_copy() -> std::io::Result<std::fs::File> {
    let fd = nix::fcntl::fcntl(std::io::stderr(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: a new fd of our own.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Points stderr at /dev/null: a daemon whose log goes elsewhere must not hold the terminal
/// (or the ssh session, or the pipe) that started it, nor hand it to its children.
pub fn detach_stderr() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{config_text, release_code_pages, unshared_file_mappings};

    #[test]
    fn only_read_only_private_file_mappings_without_own_pages_are_let_go() {
        let smaps = "\
5600-5700 r--p 00000000 fe:00 42 /usr/bin/roost
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
5700-5800 r-xp 00100000 fe:00 42 /usr/bin/roost
Rss:                 128 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
5800-5900 r--p 00200000 fe:00 42 /usr/bin/roost
Rss:                  96 kB
Anonymous:            96 kB
Swap:                  0 kB
5900-5a00 rw-p 00300000 fe:00 42 /usr/bin/roost
Rss:                   8 kB
Anonymous:             0 kB
Swap:                  0 kB
5a00-5b00 r-xp 00000000 fe:00 43 /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
5b00-5c00 r--s 00000000 fe:00 44 /dev/shm/x
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
5c00-5d00 rw-p 00000000 00:00 0 [heap]
Rss:                 424 kB
Anonymous:           424 kB
Swap:                  0 kB
7f00-7f01 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
7f02-7f03 r-xp 00000000 fe:00 45 /usr/lib/libm.so.6
Rss:                   4 kB
Swap:                  0 kB
7f04-7f05 r--p 00010000 fe:00 45 /usr/lib/libm.so.6
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  4 kB
";
        // The relocated data (own pages), the writable data, the unused libc, the shared
        // mapping, the heap, the vDSO, a mapping whose anonymous count is not shown, and
        // relocated data swapped out (its own pages are in swap) stay.
        assert_eq!(
            unshared_file_mappings(smaps),
            vec![(0x5600, 0x5700), (0x5700, 0x5800)]
        );
    }

    #[test]
    fn code_let_go_comes_back_on_use() {
        fn resident_file_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("status");
            let line = status
                .lines()
                .find(|l| l.starts_with("RssFile:"))
                .expect("RssFile");
            line.split_ascii_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("kB")
        }
        let before = resident_file_kib();
        let released = release_code_pages().expect("smaps");
        assert!(released > 0, "nothing let go");
        assert!(resident_file_kib() < before, "{before} kB still resident");
        // The code runs on: what was let go is faulted back in as it is used.
        assert_eq!(config_text(b"a = 1\n".to_vec()).as_deref(), Ok("a = 1\n"));
    }

    #[test]
    fn a_latin1_comment_is_read_and_any_other_line_that_is_not_utf8_is_named() {
        let text = config_text(b"# f\xfcr den Server\nbase_dir = /tmp\n".to_vec()).expect("read");
        assert_eq!(text, "# f\u{fffd}r den Server\nbase_dir = /tmp\n");
        assert_eq!(
            config_text(b"# ok\nlog_path = /tmp/gr\xfc\xdf.log\n".to_vec()),
            Err("line 2 is not UTF-8 (byte 19 of the line is 0xfc)".to_owned())
        );
        assert_eq!(
            config_text("ünïcode = ok\n".as_bytes().to_vec()).as_deref(),
            Ok("ünïcode = ok\n")
        );
    }
}
