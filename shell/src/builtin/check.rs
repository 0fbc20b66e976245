//! What `roost check`, the start and a reload verify of the built-ins and the mail host before
//! any process runs: the things the built-ins would otherwise find one login at a time (or, for
//! a fifo listener, never). Each error names the
//! setting and, where it was written, its file and line, as the configuration checks of core do.
//!
//! Only services that will run are checked: a stock tree whose pop3 is disabled by `protocols`
//! is not refused for a certificate it never uses.

use roost_core::config::{Config, GenericEntry, Origin};

use crate::mail::passdb::{PassdbArgs, Userdb};

/// Where the `index`-th `kind` section (passdb, userdb) sets `key`, or the section's first line
/// with a setting.
fn db_origin(config: &Config, kind: &str, index: usize, key: &str) -> Option<Origin> {
    let section = config
        .raw
        .sections
        .iter()
        .filter(|s| s.kind == kind)
        .nth(index)?;
    let settings = || {
        section.entries.iter().filter_map(|entry| match entry {
            GenericEntry::Setting(k, value) => Some((k, value)),
            GenericEntry::Section(_) => None,
        })
    };
    settings()
        .find(|(k, _)| *k == key)
        .or_else(|| settings().next())
        .and_then(|(_, value)| value.origin.clone())
}

/// `error`, after `FILE:LINE: ` when the origin is known.
fn at(origin: Option<Origin>, error: String) -> String {
    match origin {
        Some(origin) => format!("{origin}: {error}"),
        None => error,
    }
}

/// The errors of the built-ins' settings (listeners, the mail host's databases, mailboxes and
/// certificates), for the services in `running`.
pub fn builtin_errors(config: &Config, running: &[String]) -> Vec<String> {
    let settings = &config.settings;
    let runs = |name: &str| running.iter().any(|r| r == name);
    // The built-ins accept connections; none reads a fifo (accept() fails on one), so a fifo
    // listener on a built-in would wait for ever unread.
    let mut errors: Vec<String> = settings
        .services
        .iter()
        .filter(|s| runs(&s.name))
        .filter_map(|s| {
            let builtin = s.executable.split_whitespace().next()?;
            let fifo = s.fifo_listeners.iter().find(|l| l.mode != 0)?;
            super::BUILTINS.contains(&builtin).then(|| {
                format!(
                    "service({}): fifo_listener {}: the built-in {builtin} reads no fifo (use a unix_listener)",
                    s.name, fifo.path
                )
            })
        })
        .collect();
    let executable_runs = |builtin: &str| {
        settings
            .services
            .iter()
            .any(|s| s.executable.split_whitespace().next() == Some(builtin) && runs(&s.name))
    };
    if executable_runs("auth") {
        for (i, db) in settings.passdbs.iter().enumerate() {
            let origin = |key| db_origin(config, "passdb", i, key);
            let error = match db.driver.as_str() {
                "passwd-file" => match PassdbArgs::parse(&db.args) {
                    Ok(args) => unreadable("passdb passwd-file", &args.path),
                    Err(e) => Some(e),
                },
                other => Some(format!(
                    "passdb {{ driver = {other} }}: not supported (roost has passwd-file)"
                )),
            };
            let key = if db.driver == "passwd-file" {
                "args"
            } else {
                "driver"
            };
            errors.extend(error.map(|e| at(origin(key), e)));
        }
        for (i, db) in settings.userdbs.iter().enumerate() {
            let origin = |key| db_origin(config, "userdb", i, key);
            let error = match db.driver.as_str() {
                "static" => Userdb::parse_static(&db.args)
                    .err()
                    .map(|e| e.to_string()),
                "passwd-file" => match PassdbArgs::parse(&db.args) {
                    Ok(args) => unreadable("userdb passwd-file", &args.path),
                    Err(e) => Some(e.replace("passdb", "userdb")),
                },
                "prefetch" => None,
                other => Some(format!(
                    "userdb {{ driver = {other} }}: not supported (roost has static and passwd-file)"
                )),
            };
            let key = if matches!(db.driver.as_str(), "static" | "passwd-file") {
                "args"
            } else {
                "driver"
            };
            errors.extend(error.map(|e| at(origin(key), e)));
        }
        if settings.passdbs.is_empty() && executable_runs("pop3-login") {
            errors.push("no passdb { } is configured: nobody can log in".to_owned());
        }
    }
    if executable_runs("pop3") {
        let location = settings
            .global
            .other
            .get("mail_location")
            .map(String::as_str)
            .unwrap_or("");
        let per_user = settings.userdbs.iter().any(|db| db.args.contains("mail="));
        if !location.is_empty() && !location.starts_with("maildir:") {
            let origin = config
                .raw
                .globals
                .get("mail_location")
                .and_then(|v| v.origin.clone());
            errors.push(at(
                origin,
                format!("mail_location = {location}: roost serves maildir: mailboxes only"),
            ));
        } else if location.is_empty() && !per_user {
            errors.push(
                "mail_location is not set (e.g. mail_location = maildir:~/Maildir)".to_owned(),
            );
        }
    }
    let global = &settings.global;
    let tls_listener = settings.services.iter().any(|s| {
        runs(&s.name)
            && s.executable.split_whitespace().next() == Some("pop3-login")
            && s.inet_listeners.iter().any(|l| l.ssl && l.port != 0)
    });
    if executable_runs("pop3-login") && global.ssl != "no" {
        if global.ssl_cert.is_empty() || global.ssl_key.is_empty() {
            if tls_listener || global.ssl == "required" {
                let origin = config.raw.globals.get("ssl").and_then(|v| v.origin.clone());
                errors.push(at(
                    origin,
                    format!(
                        "ssl = {}: ssl_cert and ssl_key must be set (or ssl = no)",
                        global.ssl
                    ),
                ));
            }
        } else if let Err(e) = crate::mail::tls::server_config(&global.ssl_cert, &global.ssl_key) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Why `path` cannot be read, if it cannot.
fn unreadable(what: &str, path: &str) -> Option<String> {
    std::fs::File::open(path)
        .err()
        .map(|e| format!("{what}: {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_core::config::{load_str, MemoryFiles, NoEnv};

    fn errors(text: &str) -> Vec<String> {
        let config = load_str("t.conf", text, &MemoryFiles::default(), &NoEnv).expect("parses");
        let running: Vec<String> = ["auth", "pop3-login", "pop3", "anvil"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        builtin_errors(&config, &running)
    }

    #[test]
    fn a_mail_host_is_refused_before_it_starts_for_what_its_processes_would_trip_on() {
        let errs = errors(
            "ssl = yes\npassdb {\n  driver = passwd-file\n  args = /nonexistent/passwd\n}\n\
             passdb {\n  driver = ldap\n}\nuserdb {\n  driver = static\n  args = uid\n}\n\
             mail_location = mbox:~/mail\n",
        );
        let text = errs.join("\n");
        assert!(
            text.contains("passdb passwd-file: /nonexistent/passwd: No such file"),
            "{text}"
        );
        assert!(
            text.contains("t.conf:7: passdb { driver = ldap }: not supported"),
            "{text}"
        );
        assert!(
            text.contains("t.conf:4: passdb passwd-file: /nonexistent/passwd"),
            "{text}"
        );
        assert!(
            text.contains("t.conf:13: mail_location = mbox:~/mail"),
            "{text}"
        );
        assert!(text.contains("not key=value"), "{text}");
        assert!(
            text.contains("mail_location = mbox:~/mail: roost serves maildir:"),
            "{text}"
        );
        assert!(
            text.contains("t.conf:1: ssl = yes: ssl_cert and ssl_key must be set"),
            "{text}"
        );
        assert_eq!(errs.len(), 5, "{text}");
    }

    #[test]
    fn a_fifo_listener_on_a_built_in_is_refused() {
        let errs = errors(
            "ssl = no\npassdb {\n  driver = passwd-file\n  args = /etc/passwd\n}\n\
             mail_location = maildir:~/Maildir\nservice anvil {\n  fifo_listener anvil-fifo {\n  }\n}\n",
        );
        assert_eq!(
            errs,
            vec!["service(anvil): fifo_listener anvil-fifo: the built-in anvil reads no fifo (use a unix_listener)"],
        );
    }

    #[test]
    fn a_configuration_without_mail_services_running_is_not_checked_for_them() {
        let config =
            load_str("t.conf", "ssl = yes\n", &MemoryFiles::default(), &NoEnv).expect("parses");
        assert!(builtin_errors(&config, &[]).is_empty());
    }
}
