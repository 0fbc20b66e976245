//! The auth process's password and user databases: a passwd-file passdb and a passwd-file or
//! static userdb.
//!
//! A passwd-file line is `user:{SCHEME}secret:uid:gid:gecos:home:shell:extra_fields`; every field
//! after the password may be missing, `#` starts a comment line, blank lines are skipped. The
//! whole file is checked when it is loaded: a malformed line (no user name, an unknown scheme,
//! a user listed twice) is an error naming `file:line`, so a typo is found at start-up and not
//! at the first login. Secrets are compared in constant time; crypt hashes go through RustCrypto's
//! `sha-crypt`.

use std::collections::BTreeMap;
use std::path::Path;

use subtle::ConstantTimeEq;

/// A password scheme (the `{SCHEME}` prefix, or the passdb's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `{PLAIN}`: the secret itself.
    Plain,
    /// `{CLEAR}`: another name for PLAIN.
    Clear,
    /// `{CRYPT}`: a crypt(3) string; roost knows its `$6$` and `$5$` forms.
    Crypt,
    /// `{SHA512-CRYPT}`: `$6$salt$hash`.
    Sha512Crypt,
    /// `{SHA256-CRYPT}`: `$5$salt$hash`.
    Sha256Crypt,
}

impl Scheme {
    /// The scheme of a name as written between braces, case-insensitively.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Some(match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Scheme::Plain,
            "CLEAR" | "CLEARTEXT" => Scheme::Clear,
            "CRYPT" => Scheme::Crypt,
            "SHA512-CRYPT" => Scheme::Sha512Crypt,
            "SHA256-CRYPT" => Scheme::Sha256Crypt,
            _ => return None,
        })
    }
}

/// Splits `{SCHEME}secret` into scheme and secret, using `default` when there is no prefix.
pub fn split_scheme(stored: &str, default: Scheme) -> Result<(Scheme, &str), String> {
    if let Some(rest) = stored.strip_prefix('{') {
        if let Some((name, secret)) = rest.split_once('}') {
            return match Scheme::from_name(name) {
                Some(scheme) => Ok((scheme, secret)),
                None => Err(format!("unknown password scheme {{{name}}}")),
            };
        }
    }
    Ok((default, stored))
}

/// Checks `password` against a stored secret of a known scheme, in constant time for plain
/// secrets. A crypt string that is not `$6$`/`$5$` never matches.
pub fn verify(scheme: Scheme, secret: &str, password: &str) -> bool {
    match scheme {
        Scheme::Plain | Scheme::Clear => bool::from(secret.as_bytes().ct_eq(password.as_bytes())),
        Scheme::Sha512Crypt => sha_crypt::sha512_check(password, secret).is_ok(),
        Scheme::Sha256Crypt => sha_crypt::sha256_check(password, secret).is_ok(),
        Scheme::Crypt => {
            if secret.starts_with("$6$") {
                sha_crypt::sha512_check(password, secret).is_ok()
            } else if secret.starts_with("$5$") {
                sha_crypt::sha256_check(password, secret).is_ok()
            } else {
                false
            }
        }
    }
}

/// One user of a passwd-file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The user name.
    pub user: String,
    /// The stored secret with its scheme; `None` when the field is empty.
    pub password: Option<String>,
    /// The uid field (a number or a user name), if given.
    pub uid: Option<String>,
    /// The gid field (a number or a group name), if given.
    pub gid: Option<String>,
    /// The home directory, if given.
    pub home: Option<String>,
    /// The extra fields (`key=value` or a bare `key`), in order.
    pub extra: Vec<(String, Option<String>)>,
    /// The line it came from, for messages.
    pub line: usize,
}

/// Why a passwd-file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PassdbError {
    /// The file could not be read.
    #[error("passwd-file {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file}:{line}: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Why a login was refused; Display is for the log, never for the client (which only
/// learns "Authentication failed").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No such user.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// The user has no password in the passdb.
    #[error("user {0} has no password")]
    NoPassword(String),
    /// The password did not match.
    #[error("password mismatch for {0}")]
    Mismatch(String),
}

/// A loaded passwd-file.
#[derive(Debug, Clone)]
pub struct PasswdFile {
    /// The file name, for messages.
    name: String,
    /// The scheme of secrets without a `{SCHEME}` prefix (`scheme=` in the passdb args).
    default_scheme: Scheme,
    /// The users by name.
    users: BTreeMap<String, PasswdEntry>,
}

impl PasswdFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path, default_scheme: Scheme) -> Result<PasswdFile, PassdbError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PassdbError::Read {
            file: file.clone(),
            source,
        })?;
        PasswdFile::parse(&file, &text, default_scheme)
    }

    /// Parses passwd-file text; `name` appears in errors.
    pub fn parse(
        name: &str,
        text: &str,
        default_scheme: Scheme,
    ) -> Result<PasswdFile, PassdbError> {
        let mut users = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let malformed = |reason: String| PassdbError::Malformed {
                file: name.to_owned(),
                line,
                reason,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            // The password may contain ':' only inside its scheme prefix (none do), so a plain
            // split is right; extra fields are the rest of the line, ':' included.
            let mut fields = raw.splitn(8, ':');
            let user = fields.next().unwrap_or("").trim();
            if user.is_empty() {
                return Err(malformed("missing user name".to_owned()));
            }
            let field = |f: Option<&str>| {
                f.map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            let password = field(fields.next());
            if let Some(password) = &password {
                split_scheme(password, default_scheme)
                    .map_err(|e| malformed(format!("user {user}: {e}")))?;
            }
            let uid = field(fields.next());
            let gid = field(fields.next());
            let _gecos = fields.next();
            let home = field(fields.next());
            let _shell = fields.next();
            let extra = fields
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (kv.to_owned(), None),
                })
                .collect();
            if users.contains_key(user) {
                return Err(malformed(format!("user {user} is listed more than once")));
            }
            users.insert(
                user.to_owned(),
                PasswdEntry {
                    user: user.to_owned(),
                    password,
                    uid,
                    gid,
                    home,
                    extra,
                    line,
                },
            );
        }
        Ok(PasswdFile {
            name: name.to_owned(),
            default_scheme,
            users,
        })
    }

    /// The file name it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry of `user`.
    pub fn lookup(&self, user: &str) -> Option<&PasswdEntry> {
        self.users.get(user)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a login. An entry with the `nopassword` extra field accepts any password.
    pub fn authenticate(&self, user: &str, password: &str) -> Result<&PasswdEntry, AuthError> {
        let entry = self
            .lookup(user)
            .ok_or_else(|| AuthError::UnknownUser(user.to_owned()))?;
        if entry.extra.iter().any(|(k, _)| k == "nopassword") {
            return Ok(entry);
        }
        let stored = entry
            .password
            .as_deref()
            .ok_or_else(|| AuthError::NoPassword(user.to_owned()))?;
        let (scheme, secret) = split_scheme(stored, self.default_scheme)
            .map_err(|_| AuthError::NoPassword(user.to_owned()))?;
        if verify(scheme, secret, password) {
            Ok(entry)
        } else {
            Err(AuthError::Mismatch(user.to_owned()))
        }
    }
}

/// What the userdb says about a user: what the post-login process becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name.
    pub user: String,
    /// uid (number or name).
    pub uid: Option<String>,
    /// gid (number or name).
    pub gid: Option<String>,
    /// Home directory, expanded.
    pub home: Option<String>,
    /// Other fields (e.g. `mail=maildir:~/Maildir`), expanded.
    pub extra: BTreeMap<String, String>,
}

/// Expands `%u` (user), `%n` (local part), `%d` (domain) and `%%` in a template; `%L` before
/// a letter lowercases it (`%Lu`, Dovecot's default `auth_username_format`). Unknown
/// variables are kept as written.
pub fn expand(template: &str, user: &str) -> String {
    let (local, domain) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::with_capacity(template.len() + user.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let lower = chars.peek() == Some(&'L');
        if lower {
            chars.next();
        }
        let value = match chars.next() {
            Some('u') => user,
            Some('n') => local,
            Some('d') => domain,
            Some('%') if !lower => "%",
            other => {
                out.push('%');
                if lower {
                    out.push('L');
                }
                if let Some(other) = other {
                    out.push(other);
                }
                continue;
            }
        };
        if lower {
            out.push_str(&value.to_lowercase());
        } else {
            out.push_str(value);
        }
    }
    out
}

/// The `args` of a passwd-file passdb: `[scheme=S] [username_format=F] PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassdbArgs {
    /// The scheme of secrets without a prefix (Dovecot's default: CRYPT).
    pub scheme: Scheme,
    /// How the login name becomes the lookup key (default `%u`).
    pub username_format: String,
    /// The passwd-file.
    pub path: String,
}

impl PassdbArgs {
    /// Parses the args string.
    pub fn parse(args: &str) -> Result<PassdbArgs, String> {
        let mut parsed = PassdbArgs {
            scheme: Scheme::Crypt,
            username_format: "%u".to_owned(),
            path: String::new(),
        };
        for word in args.split_whitespace() {
            if let Some(name) = word.strip_prefix("scheme=") {
                parsed.scheme = Scheme::from_name(name)
                    .ok_or_else(|| format!("passdb passwd-file: unknown scheme={name}"))?;
            } else if let Some(format) = word.strip_prefix("username_format=") {
                parsed.username_format = format.to_owned();
            } else if parsed.path.is_empty() && !word.contains('=') {
                parsed.path = word.to_owned();
            } else {
                return Err(format!("passdb passwd-file: unexpected argument {word:?}"));
            }
        }
        if parsed.path.is_empty() {
            return Err("passdb passwd-file: no file given in args".to_owned());
        }
        Ok(parsed)
    }

    /// The lookup key of a login name.
    pub fn lookup_name(&self, user: &str) -> String {
        expand(&self.username_format, user)
    }
}

/// A userdb: static templates, or the fields of the passwd-file.
#[derive(Debug, Clone)]
pub enum Userdb {
    /// `driver = static`, `args = uid=vmail gid=vmail home=/var/mail/%u`.
    Static(BTreeMap<String, String>),
    /// `driver = passwd-file`: uid, gid, home and `userdb_*` extra fields of the entry.
    PasswdFile(PasswdFile),
}

/// Why a user lookup failed; Display is the text for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserdbError {
    /// The userdb does not know the user.
    #[error("userdb: user {0} not found")]
    UnknownUser(String),
    /// A static args word is not `key=value`.
    #[error("userdb static args: {0:?} is not key=value")]
    BadArgument(String),
}

impl Userdb {
    /// Parses the args of a static userdb.
    pub fn parse_static(args: &str) -> Result<Userdb, UserdbError> {
        let mut fields = BTreeMap::new();
        for word in args.split_whitespace() {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| UserdbError::BadArgument(word.to_owned()))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        Ok(Userdb::Static(fields))
    }

    /// Looks `user` up.
    pub fn lookup(&self, user: &str) -> Result<UserInfo, UserdbError> {
        match self {
            Userdb::Static(fields) => {
                let mut extra: BTreeMap<String, String> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), expand(v, user)))
                    .collect();
                Ok(UserInfo {
                    user: user.to_owned(),
                    uid: extra.remove("uid"),
                    gid: extra.remove("gid"),
                    home: extra.remove("home"),
                    extra,
                })
            }
            Userdb::PasswdFile(file) => {
                let entry = file
                    .lookup(user)
                    .ok_or_else(|| UserdbError::UnknownUser(user.to_owned()))?;
                let mut info = UserInfo {
                    user: user.to_owned(),
                    uid: entry.uid.clone(),
                    gid: entry.gid.clone(),
                    home: entry.home.as_deref().map(|h| expand(h, user)),
                    extra: BTreeMap::new(),
                };
                for (k, v) in &entry.extra {
                    if let (Some(k), Some(v)) = (k.strip_prefix("userdb_"), v) {
                        let v = expand(v, user);
                        match k {
                            "uid" => info.uid = Some(v),
                            "gid" => info.gid = Some(v),
                            "home" => info.home = Some(v),
                            _ => {
                                info.extra.insert(k.to_owned(), v);
                            }
                        }
                    }
                }
                Ok(info)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `openssl passwd -6 -salt saltsalt demo`.
    const DEMO_SHA512: &str =
        "$6$saltsalt$..2OS7YQ9H8nOZV3zrRCC2W6gKqvDdWTzallpPfaVczvmUWzyIYqU0TarsE5PYaJ7eNXes2cIPl//BAZe0z3F1";
    /// `openssl passwd -5 -salt saltsalt demo`.
    const DEMO_SHA256: &str = "$5$saltsalt$JHkvehlP/.NJu30HDXCRu6TLyiiArvvT2.QRVUMINNB";

    #[test]
    fn plain_clear_and_crypt_schemes_verify() {
        let text = format!(
            "# users\n\ndemo:{{PLAIN}}demo\nclear:{{CLEAR}}pw::\nsha:{{SHA512-CRYPT}}{DEMO_SHA512}\nsha5:{{SHA256-CRYPT}}{DEMO_SHA256}\nbare:{DEMO_SHA512}\n"
        );
        let db = PasswdFile::parse("passwd", &text, Scheme::Crypt).expect("valid file");
        assert_eq!(db.len(), 5);
        assert!(db.authenticate("demo", "demo").is_ok());
        assert!(db.authenticate("clear", "pw").is_ok());
        assert!(db.authenticate("sha", "demo").is_ok());
        assert!(db.authenticate("sha5", "demo").is_ok());
        assert!(
            db.authenticate("bare", "demo").is_ok(),
            "default scheme CRYPT"
        );
        assert_eq!(
            db.authenticate("sha", "wrong"),
            Err(AuthError::Mismatch("sha".into()))
        );
        assert_eq!(
            db.authenticate("nobody", "x"),
            Err(AuthError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            db.authenticate("demo", "demO"),
            Err(AuthError::Mismatch("demo".into()))
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = PasswdFile::parse("/etc/p", "ok:{PLAIN}x\n:{PLAIN}y\n", Scheme::Plain)
            .expect_err("missing user");
        assert_eq!(err.to_string(), "/etc/p:2: missing user name");
        let err =
            PasswdFile::parse("/etc/p", "\n\nu:{MD5X}y\n", Scheme::Plain).expect_err("bad scheme");
        assert_eq!(
            err.to_string(),
            "/etc/p:3: user u: unknown password scheme {MD5X}"
        );
        let err = PasswdFile::parse("/etc/p", "u:a\nu:b\n", Scheme::Plain).expect_err("dup");
        assert_eq!(err.to_string(), "/etc/p:2: user u is listed more than once");
    }

    #[test]
    fn missing_fields_and_no_password() {
        let db =
            PasswdFile::parse("p", "nopw\nfree::::::: nopassword\n", Scheme::Plain).expect("valid");
        assert_eq!(
            db.authenticate("nopw", ""),
            Err(AuthError::NoPassword("nopw".into()))
        );
        assert!(db.authenticate("free", "anything").is_ok());
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let err = PasswdFile::load(Path::new("/nonexistent/roost-passwd"), Scheme::Plain)
            .expect_err("missing");
        assert!(err
            .to_string()
            .starts_with("passwd-file /nonexistent/roost-passwd: "));
    }

    #[test]
    fn static_userdb_expands_user_local_part_and_domain() {
        let db =
            Userdb::parse_static("uid=vmail gid=vmail home=/var/mail/%d/%n mail=maildir:~/M%%")
                .expect("valid");
        let info = db.lookup("ann@example.org").expect("static knows everyone");
        assert_eq!(info.uid.as_deref(), Some("vmail"));
        assert_eq!(info.home.as_deref(), Some("/var/mail/example.org/ann"));
        assert_eq!(
            info.extra.get("mail").map(String::as_str),
            Some("maildir:~/M%")
        );
        assert!(matches!(
            Userdb::parse_static("uid"),
            Err(UserdbError::BadArgument(_))
        ));
    }

    #[test]
    fn passwd_file_userdb_uses_fields_and_userdb_extras() {
        let file = PasswdFile::parse(
            "p",
            "demo:{PLAIN}demo:1000:1000::/home/%u:: userdb_mail=maildir:~/Maildir userdb_uid=1001\n",
            Scheme::Plain,
        )
        .expect("valid");
        let db = Userdb::PasswdFile(file);
        let info = db.lookup("demo").expect("known");
        assert_eq!(info.uid.as_deref(), Some("1001"));
        assert_eq!(info.gid.as_deref(), Some("1000"));
        assert_eq!(info.home.as_deref(), Some("/home/demo"));
        assert_eq!(
            info.extra.get("mail").map(String::as_str),
            Some("maildir:~/Maildir")
        );
        assert_eq!(
            db.lookup("ghost"),
            Err(UserdbError::UnknownUser("ghost".into()))
        );
    }

    #[test]
    fn lowercase_modifier_and_unknown_variables() {
        assert_eq!(expand("%Lu", "DeMo@Ex.ORG"), "demo@ex.org");
        assert_eq!(expand("%Ln/%Ld", "A@B"), "a/b");
        assert_eq!(expand("%x %L %Lx %", "u"), "%x %L %Lx %");
    }

    #[test]
    fn passdb_args_of_the_peer_config() {
        let args =
            PassdbArgs::parse("scheme=PLAIN username_format=%Lu /srv/passwd").expect("valid");
        assert_eq!(args.scheme, Scheme::Plain);
        assert_eq!(args.path, "/srv/passwd");
        assert_eq!(args.lookup_name("DEMO"), "demo");
        assert_eq!(
            PassdbArgs::parse("/p").expect("valid").scheme,
            Scheme::Crypt
        );
        assert!(PassdbArgs::parse("scheme=NOPE /p").is_err());
        assert!(PassdbArgs::parse("scheme=PLAIN").is_err());
        assert!(PassdbArgs::parse("/a /b").is_err());
    }

    proptest! {
        #[test]
        fn random_text_never_panics_the_parser(text in ".{0,400}", user in ".{0,20}", pw in ".{0,20}") {
            if let Ok(db) = PasswdFile::parse("p", &text, Scheme::Crypt) {
                let _ = db.authenticate(&user, &pw);
                let _ = Userdb::PasswdFile(db).lookup(&user);
            }
            let _ = expand(&text, &user);
        }
    }
}
