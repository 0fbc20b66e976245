//! A Maildir mailbox for the post-login pop3 process: the [`Mailbox`] of [`super::pop3`].
//!
//! Opening moves every message of `new/` into `cur/` with the `:2,` info suffix, as a Maildir
//! reader does, then lists `cur/` once: that list is the session's snapshot (POP3 numbers do
//! not change during a session). Sizes are POP3 sizes, with bare LF counted as CRLF (taken from
//! the `,W=` field of the file name when a delivery agent wrote one). The UIDL is the unique
//! part of the file name (before `:`), so it is stable across sessions and flag changes.
//! Files that vanish between the listing and RETR give an error reply, never a panic; files
//! already gone at QUIT count as expunged.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::pop3::{Mailbox, MessageInfo};

/// One message file in `cur/`.
#[derive(Debug, Clone)]
struct Entry {
    /// The file name when listed (may change if another process sets flags).
    file_name: String,
    /// The unique part of the name, before `:`.
    base: String,
    /// What POP3 reports.
    info: MessageInfo,
}

/// A Maildir opened for one POP3 session.
#[derive(Debug)]
pub struct Maildir {
    /// The Maildir's root (holding cur/, new/, tmp/).
    root: PathBuf,
    /// The session's snapshot of messages, sorted by file name (delivery order).
    entries: Vec<Entry>,
    /// The infos of `entries`, in the same order, for [`Mailbox::messages`].
    infos: Vec<MessageInfo>,
}

/// Why a Maildir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// A directory could not be created or read.
    #[error("maildir {path}: {source}")]
    Io {
        /// The directory concerned.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The unique part of a Maildir file name.
fn base_name(file_name: &str) -> &str {
    file_name.split(':').next().unwrap_or(file_name)
}

/// The `,W=<virtual size>` field of a base name, when present.
fn virtual_size(base: &str) -> Option<u64> {
    base.split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("W=")?.parse().ok())
}

/// A UIDL for a base name: itself when it is valid for POP3 (printable ASCII without spaces,
/// at most 70 characters, RFC 1939), else a stable hex digest of it.
fn uidl_for(base: &str) -> String {
    if !base.is_empty() && base.len() <= 70 && base.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return base.to_owned();
    }
    // FNV-1a, 64 bit: stable across runs and platforms, which is all a UIDL needs.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The POP3 size of a file: bytes plus one for every LF not preceded by CR.
pub fn pop3_size(reader: &mut dyn Read) -> io::Result<u64> {
    let mut buf = [0u8; 64 * 1024];
    let mut size = 0u64;
    let mut prev = 0u8;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(size),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            size += 1;
            if b == b'\n' && prev != b'\r' {
                size += 1;
            }
            prev = b;
        }
    }
}

impl Maildir {
    /// Opens the Maildir at `root`, creating cur/, new/ and tmp/ if missing, moving new mail
    /// to cur/ and listing it.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        let cur = root.join("cur");
        let new = root.join("new");
        for dir in [&cur, &new, &root.join("tmp")] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        for entry in fs::read_dir(&new).map_err(io_error(&new))? {
            let entry = entry.map_err(io_error(&new))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let target = cur.join(format!("{}:2,", base_name(name)));
            // Another reader may have moved it first: that is not an error.
            match fs::rename(entry.path(), &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&new)(e)),
            }
        }
        let mut entries = Vec::new();
        for entry in fs::read_dir(&cur).map_err(io_error(&cur))? {
            let entry = entry.map_err(io_error(&cur))?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let base = base_name(&file_name).to_owned();
            let size = match virtual_size(&base) {
                Some(size) => size,
                None => match fs::File::open(entry.path()) {
                    Ok(mut file) => match pop3_size(&mut file) {
                        Ok(size) => size,
                        Err(_) => continue,
                    },
                    // Vanished between readdir and open: it is not part of the snapshot.
                    Err(_) => continue,
                },
            };
            let uidl = uidl_for(&base);
            entries.push(Entry {
                file_name,
                base,
                info: MessageInfo { size, uidl },
            });
        }
        entries.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let infos = entries.iter().map(|e| e.info.clone()).collect();
        Ok(Maildir {
            root: root.to_owned(),
            entries,
            infos,
        })
    }

    /// The path of entry `index`, looking it up again by its base name if another process
    /// renamed it (changed its flags) since the listing.
    fn locate(&self, index: usize) -> io::Result<PathBuf> {
        let entry = self
            .entries
            .get(index)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let cur = self.root.join("cur");
        let path = cur.join(&entry.file_name);
        if path.exists() {
            return Ok(path);
        }
        for other in fs::read_dir(&cur)? {
            let other = other?;
            if let Some(name) = other.file_name().to_str() {
                if base_name(name) == entry.base {
                    return Ok(other.path());
                }
            }
        }
        Err(io::ErrorKind::NotFound.into())
    }
}

impl Mailbox for Maildir {
    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn open(&mut self, index: usize) -> io::Result<Box<dyn Read + Send>> {
        let path = self.locate(index)?;
        Ok(Box::new(fs::File::open(path)?))
    }

    fn expunge(&mut self, indices: &[usize]) -> io::Result<()> {
        let mut first_error = None;
        for &index in indices {
            match self.locate(index).and_then(fs::remove_file) {
                Ok(()) => {}
                // Already removed by someone else: the outcome the client asked for.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::pop3::tests::text;
    use crate::mail::pop3::Session;

    fn deliver(root: &Path, dir: &str, name: &str, body: &[u8]) {
        fs::create_dir_all(root.join(dir)).expect("temp dir");
        fs::write(root.join(dir).join(name), body).expect("temp file");
    }

    #[test]
    fn new_mail_moves_to_cur_with_the_info_suffix() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "new", "1000.M1.host", b"a\n");
        let mb = Maildir::open(dir.path()).expect("open");
        assert!(dir.path().join("cur/1000.M1.host:2,").exists());
        assert!(!dir.path().join("new/1000.M1.host").exists());
        assert_eq!(mb.messages()[0].uidl, "1000.M1.host");
    }

    #[test]
    fn sizes_count_bare_lf_as_crlf_and_trust_the_w_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "cur", "1.a:2,S", b"x\ny\r\n");
        deliver(dir.path(), "cur", "2.b,S=3,W=99:2,", b"zz\n");
        let mb = Maildir::open(dir.path()).expect("open");
        let sizes: Vec<u64> = mb.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, vec![6, 99]);
    }

    #[test]
    fn uidl_is_stable_across_flag_changes_and_sessions() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "cur", "5.q:2,", b"m\n");
        let first = Maildir::open(dir.path()).expect("open").messages()[0].clone();
        fs::rename(
            dir.path().join("cur/5.q:2,"),
            dir.path().join("cur/5.q:2,S"),
        )
        .expect("rename");
        let second = Maildir::open(dir.path()).expect("open").messages()[0].clone();
        assert_eq!(first, second);
        assert_eq!(uidl_for("has space"), uidl_for("has space"));
        assert!(!uidl_for("has space").contains(' '));
    }

    #[test]
    fn retr_follows_a_renamed_file_and_errors_on_a_vanished_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "cur", "1.a:2,", b"one\n");
        deliver(dir.path(), "cur", "2.b:2,", b"two\n");
        let mut s = Session::new(Maildir::open(dir.path()).expect("open"));
        fs::rename(
            dir.path().join("cur/1.a:2,"),
            dir.path().join("cur/1.a:2,S"),
        )
        .expect("rename");
        fs::remove_file(dir.path().join("cur/2.b:2,")).expect("remove");
        assert_eq!(
            text(s.handle_line(b"RETR 1")),
            "+OK 5 octets\r\none\r\n.\r\n"
        );
        assert!(text(s.handle_line(b"RETR 2")).starts_with("-ERR"));
        // DELE of the vanished one still lets QUIT succeed.
        text(s.handle_line(b"DELE 2"));
        assert!(text(s.handle_line(b"QUIT")).starts_with("+OK"));
    }

    #[test]
    fn expunge_happens_at_quit_and_a_dropped_session_keeps_everything() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "cur", "1.a:2,", b"one\n");
        deliver(dir.path(), "cur", "2.b:2,", b"two\n");
        {
            let mut s = Session::new(Maildir::open(dir.path()).expect("open"));
            text(s.handle_line(b"DELE 1"));
            // The client drops: the session is dropped without QUIT.
        }
        assert_eq!(Maildir::open(dir.path()).expect("open").messages().len(), 2);
        let mut s = Session::new(Maildir::open(dir.path()).expect("open"));
        text(s.handle_line(b"DELE 1"));
        assert_eq!(
            text(s.handle_line(b"QUIT")),
            "+OK Logging out, messages deleted.\r\n"
        );
        let left = Maildir::open(dir.path()).expect("open");
        assert_eq!(left.messages().len(), 1);
        assert_eq!(left.messages()[0].uidl, "2.b");
    }

    proptest::proptest! {
        /// LIST must announce exactly the octets RETR sends (before dot-stuffing and the
        /// terminator), or clients that pre-allocate or check sizes break.
        #[test]
        fn list_size_matches_the_retr_octets(
            body in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', b' ']), 0..300)
        ) {
            let mut body = body;
            body.push(b'\n');
            let size = pop3_size(&mut &body[..]).expect("memory read");
            let mut out = Vec::new();
            crate::mail::pop3::copy_message(
                &mut &body[..],
                crate::mail::pop3::BodyEncoder::new(None),
                &mut out,
            )
            .expect("memory write");
            proptest::prop_assert_eq!(size, out.len() as u64 - 3);
        }
    }

    #[test]
    fn dotfiles_are_not_messages() {
        let dir = tempfile::tempdir().expect("temp dir");
        deliver(dir.path(), "cur", ".hidden", b"x");
        deliver(dir.path(), "new", ".tmpfile", b"x");
        assert!(Maildir::open(dir.path())
            .expect("open")
            .messages()
            .is_empty());
    }
}
