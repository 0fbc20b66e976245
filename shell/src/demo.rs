//! The embedded default's demo data (DESIGN.md "The embedded default"): a passwd-file with the
//! user `demo` (password `demo`), a Maildir holding one message, and a self-signed certificate
//! for 127.0.0.1 and localhost, under `$XDG_DATA_HOME/roost` or `~/.local/share/roost`.
//!
//! Created on first start and never overwritten: an operator who changed the password or read
//! and deleted the message keeps what they did.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the demo data lives: `$XDG_DATA_HOME/roost`, else `~/.local/share/roost`, else (no
/// home at all) `/tmp/roost-data-UID`.
pub fn demo_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("roost");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(".local/share/roost");
    }
    PathBuf::from(format!("/tmp/roost-data-{}", nix::unistd::geteuid()))
}

/// The message the demo mailbox starts with.
const WELCOME: &str = "From: roost <postmaster@localhost>\r\n\
To: demo <demo@localhost>\r\n\
Subject: Welcome to roost\r\n\
Date: Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Message-ID: <welcome@roost.localhost>\r\n\
\r\n\
This message was fetched over POP3 from roost's embedded default configuration.\r\n\
Its Maildir is under the demo data directory; delete it with DELE and QUIT.\r\n";

/// Creates what is missing of the demo data under `dir`.
pub fn ensure(dir: &Path) -> Result<(), String> {
    let fail = |what: &Path, e: std::io::Error| format!("demo data: {}: {e}", what.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(dir, e))?;
    let passwd = dir.join("passwd");
    if !passwd.exists() {
        write_new(&passwd, b"demo:{PLAIN}demo\n", 0o600).map_err(|e| fail(&passwd, e))?;
    }
    let maildir = dir.join("mail/demo/Maildir");
    if !maildir.exists() {
        for sub in ["cur", "new", "tmp"] {
            let path = maildir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| fail(&path, e))?;
        }
        let message = maildir.join("new/1795392000.M1P1.roost-welcome");
        write_new(&message, WELCOME.as_bytes(), 0o600).map_err(|e| fail(&message, e))?;
    }
    crate::mail::tls::ensure_self_signed(
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .map_err(|e| format!("demo data: {e}"))?;
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_data_is_made_once_and_then_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("roost");
        ensure(&root).expect("first start");
        let passwd = fs::read_to_string(root.join("passwd")).expect("passwd");
        assert_eq!(passwd, "demo:{PLAIN}demo\n");
        let new = root.join("mail/demo/Maildir/new");
        assert_eq!(fs::read_dir(&new).expect("new/").count(), 1);
        assert!(root.join("cert.pem").is_file() && root.join("key.pem").is_file());
        // The operator read and deleted the message, and changed the password.
        for entry in fs::read_dir(&new).expect("new/") {
            fs::remove_file(entry.expect("entry").path()).expect("delete");
        }
        fs::write(root.join("passwd"), "demo:{PLAIN}secret\n").expect("edit");
        ensure(&root).expect("second start");
        assert_eq!(fs::read_dir(&new).expect("new/").count(), 0);
        assert_eq!(
            fs::read_to_string(root.join("passwd")).expect("passwd"),
            "demo:{PLAIN}secret\n"
        );
    }
}
