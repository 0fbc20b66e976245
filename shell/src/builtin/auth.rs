//! The `auth` built-in: checks passwords (passdb) for login processes and looks users up
//! (userdb) for post-login processes, over roost's line protocol ([`crate::mail::authwire`]).
//!
//! Its unix listeners are typed by the suffix of their file name, as the seed says: `-client`
//! and `login` (the login processes' `login/login`) answer AUTH; `-userdb` and `-master` answer
//! USER. A request on the wrong kind of socket is refused: a login process (unprivileged,
//! chrooted) must not learn uids and homes, and a userdb client has no business checking
//! passwords. The databases are read at start, while still privileged, and every malformed
//! line is reported with its `file:line` then: a typo stops auth at start, not at a login.

use super::conn::Conn;
use super::server::{self, Service};
use super::{error, info, Start};
use crate::mail::authwire::{AuthReply, AuthRequest, MAX_LINE};
use crate::mail::passdb::{PassdbArgs, PasswdFile, Scheme, Userdb};
use crate::mail::pop3::LineReader;

/// What a listener answers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    /// Password checks.
    Login,
    /// User lookups.
    Userdb,
}

/// The role of a listener by its name (the file name of its path).
fn role_of(name: &str) -> Option<Role> {
    let suffix = name.rsplit(['-', '/']).next().unwrap_or(name);
    match suffix {
        "client" | "login" | "tokenlogin" => Some(Role::Login),
        "userdb" | "master" => Some(Role::Userdb),
        _ => None,
    }
}

/// The databases.
pub struct Databases {
    passdbs: Vec<(PassdbArgs, PasswdFile)>,
    userdbs: Vec<Userdb>,
    /// uid and gid names already resolved to numbers (`uid=vmail`): a post-login process
    /// then needs no user database of its own, once per session.
    ids: std::collections::BTreeMap<(bool, String), Option<String>>,
}

impl Databases {
    /// Loads every passdb and userdb of the settings; an unsupported driver or a bad file is
    /// an error naming it.
    pub fn load(start: &Start) -> Result<Databases, String> {
        let mut passdbs = Vec::new();
        for db in &start.settings.passdbs {
            match db.driver.as_str() {
                "passwd-file" => {
                    let args = PassdbArgs::parse(&db.args)?;
                    let file = PasswdFile::load(std::path::Path::new(&args.path), args.scheme)
                        .map_err(|e| e.to_string())?;
                    passdbs.push((args, file));
                }
                other => {
                    return Err(format!(
                        "passdb {{ driver = {other} }} is not supported (roost has passwd-file)"
                    ))
                }
            }
        }
        let mut userdbs = Vec::new();
        for db in &start.settings.userdbs {
            userdbs.push(match db.driver.as_str() {
                "static" => Userdb::parse_static(&db.args).map_err(|e| e.to_string())?,
                "passwd-file" => {
                    let args = PassdbArgs::parse(&db.args)?;
                    Userdb::PasswdFile(
                        PasswdFile::load(std::path::Path::new(&args.path), Scheme::Crypt)
                            .map_err(|e| e.to_string())?,
                    )
                }
                "prefetch" => continue,
                other => {
                    return Err(format!(
                        "userdb {{ driver = {other} }} is not supported (roost has static and passwd-file)"
                    ))
                }
            });
        }
        if passdbs.is_empty() {
            return Err("no passdb { } is configured: nobody can log in".to_owned());
        }
        Ok(Databases {
            passdbs,
            userdbs,
            ids: Default::default(),
        })
    }

    /// A uid or gid field as a number: names are looked up once and remembered; a name the
    /// system does not know is passed on as written (the post-login process refuses it).
    fn numeric(&mut self, group: bool, value: String) -> String {
        if value.parse::<u32>().is_ok() {
            return value;
        }
        let found = self
            .ids
            .entry((group, value.clone()))
            .or_insert_with(|| {
                if group {
                    nix::unistd::Group::from_name(&value)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.to_string())
                } else {
                    nix::unistd::User::from_name(&value)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.to_string())
                }
            })
            .clone();
        found.unwrap_or(value)
    }

    /// Answers one request.
    pub fn answer(&mut self, request: AuthRequest) -> AuthReply {
        match request {
            AuthRequest::Auth {
                id,
                user,
                password,
                remote_ip,
                ..
            } => {
                let mut reason = String::from("no passdb");
                for (args, file) in &self.passdbs {
                    let name = args.lookup_name(&user);
                    match file.authenticate(&name, &password) {
                        Ok(entry) => {
                            return AuthReply::Ok {
                                id,
                                user: entry.user.clone(),
                            }
                        }
                        Err(e) => reason = e.to_string(),
                    }
                }
                info(&format!("passwd-file({user},{remote_ip}): {reason}"));
                AuthReply::Fail { id, reason }
            }
            AuthRequest::User { id, user } => {
                let found = self.userdbs.iter().find_map(|db| db.lookup(&user).ok());
                if let Some(found) = found {
                    let mut fields = found.extra;
                    if let Some(uid) = found.uid {
                        fields.insert("uid".to_owned(), self.numeric(false, uid));
                    }
                    if let Some(gid) = found.gid {
                        fields.insert("gid".to_owned(), self.numeric(true, gid));
                    }
                    if let Some(home) = found.home {
                        fields.insert("home".to_owned(), home);
                    }
                    return AuthReply::User { id, user, fields };
                }
                if self.userdbs.is_empty() {
                    // No userdb: the user exists if a passdb knows it; the post-login process
                    // keeps its own identity.
                    if self
                        .passdbs
                        .iter()
                        .any(|(args, file)| file.lookup(&args.lookup_name(&user)).is_some())
                    {
                        return AuthReply::User {
                            id,
                            user,
                            fields: Default::default(),
                        };
                    }
                }
                AuthReply::NotFound { id, user }
            }
        }
    }
}

struct AuthService {
    dbs: Databases,
    roles: Vec<Option<Role>>,
}

/// One client connection.
pub struct AuthClient {
    role: Role,
    lines: LineReader,
}

impl Service for AuthService {
    type Client = AuthClient;

    fn accepted(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        listener: usize,
    ) -> Option<(Conn, AuthClient)> {
        let role = self.roles.get(listener).copied().flatten()?;
        Some((
            server::unix_conn(stream)?,
            AuthClient {
                role,
                lines: LineReader::new(MAX_LINE),
            },
        ))
    }

    fn input(&mut self, client: &mut AuthClient, conn: &mut Conn, input: &mut Vec<u8>) -> bool {
        client.lines.feed(input);
        input.clear();
        let mut out = String::new();
        while let Some(line) = client.lines.next_line() {
            let request = match line
                .map_err(|e| e.to_string())
                .and_then(|l| AuthRequest::parse(&l).map_err(|e| e.to_string()))
            {
                Ok(request) => request,
                Err(e) => {
                    error(&e);
                    return false;
                }
            };
            let allowed = matches!(
                (&request, client.role),
                (AuthRequest::Auth { .. }, Role::Login) | (AuthRequest::User { .. }, Role::Userdb)
            );
            if !allowed {
                error(&format!(
                    "auth: a {:?} client asked for what its socket does not serve",
                    client.role
                ));
                return false;
            }
            out.push_str(&self.dbs.answer(request).encode());
        }
        out.is_empty() || conn.write(out.as_bytes()).is_ok()
    }

    fn closed(&mut self, _client: AuthClient) {}
}

/// `roost --builtin auth`.
pub fn main() -> i32 {
    super::main_of("auth", |start| {
        // The files are read while privileged: a passwd-file is usually not readable by the
        // unprivileged auth user.
        let dbs = Databases::load(&start).map_err(|e| format!("auth: {e}"))?;
        start.restrict("auth")?;
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .map(str::to_owned)
            .collect();
        let roles = (0..start.env.listeners.len())
            .map(|i| names.get(i).and_then(|n| role_of(n)))
            .collect();
        let mut service = AuthService { dbs, roles };
        server::run(&start.env, start.child_config(false), &mut service)
            .map_err(|e| format!("auth: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_typed_by_the_suffix_of_their_name() {
        assert_eq!(role_of("auth-client"), Some(Role::Login));
        assert_eq!(role_of("login"), Some(Role::Login));
        assert_eq!(role_of("auth-login"), Some(Role::Login));
        assert_eq!(role_of("auth-userdb"), Some(Role::Userdb));
        assert_eq!(role_of("auth-master"), Some(Role::Userdb));
        assert_eq!(role_of("auth-worker"), None);
    }
}

#[cfg(test)]
mod lookups {
    use super::*;
    use crate::mail::passdb::PasswdFile;

    fn databases() -> Databases {
        let file =
            PasswdFile::parse("passwd", "demo:{PLAIN}demo\n", Scheme::Plain).expect("passwd");
        Databases {
            passdbs: vec![(PassdbArgs::parse("/x").expect("args"), file)],
            userdbs: vec![Userdb::parse_static("uid=root gid=root home=/home/%u").expect("static")],
            ids: Default::default(),
        }
    }

    #[test]
    fn user_lookups_give_numeric_ids_and_passwords_are_checked() {
        let mut dbs = databases();
        let reply = dbs.answer(AuthRequest::User {
            id: 7,
            user: "demo".to_owned(),
        });
        let AuthReply::User { id, fields, .. } = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(id, 7);
        assert_eq!(fields["uid"], "0", "root is uid 0 everywhere");
        assert_eq!(fields["gid"], "0");
        assert_eq!(fields["home"], "/home/demo");
        let auth = |password: &str| AuthRequest::Auth {
            id: 8,
            service: "pop3".to_owned(),
            user: "demo".to_owned(),
            password: password.to_owned(),
            remote_ip: "127.0.0.1".parse().expect("ip"),
        };
        assert!(matches!(
            dbs.answer(auth("demo")),
            AuthReply::Ok { id: 8, .. }
        ));
        assert!(matches!(
            dbs.answer(auth("nope")),
            AuthReply::Fail { id: 8, .. }
        ));
    }
}
