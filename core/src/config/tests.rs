//! The language rules of reference §6.1 and the checks of §3, each with its exact message.

use super::*;

struct TestSystem {
    fd_limit: u64,
}

impl System for TestSystem {
    fn user_exists(&self, name: &str) -> bool {
        ["root", "nobody", "vmail"].contains(&name)
    }
    fn group_exists(&self, name: &str) -> bool {
        ["root", "nogroup", "mail"].contains(&name)
    }
    fn fd_limit(&self) -> u64 {
        self.fd_limit
    }
}

const SYSTEM: TestSystem = TestSystem { fd_limit: 65536 };

fn load_text(text: &str) -> Result<Config, ConfigError> {
    load_str(
        "/etc/roost/roost.conf",
        text,
        &MemoryFiles::default(),
        &NoEnv,
    )
}

fn service<'a>(config: &'a Config, name: &str) -> &'a ServiceSettings {
    config
        .settings
        .services
        .iter()
        .find(|s| s.name == name)
        .expect("service exists")
}

fn error_of(text: &str) -> String {
    match load_text(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(error) => error.to_string(),
    }
}

fn check_errors(text: &str) -> Vec<String> {
    let config = load_text(text).expect("parses");
    match check(&config, &SYSTEM) {
        Ok(warnings) => panic!("no error, warnings {warnings:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn warnings_of(text: &str, system: &TestSystem) -> Vec<String> {
    let config = load_text(text).expect("parses");
    check(&config, system)
        .expect("no error")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_service_block_modifies_the_default_service_and_a_new_name_creates_one() {
    let config = load_text(
        "service pop3-login {\n  service_count = 0\n  process_min_avail = 2\n}\nservice echo {\n  executable = inetd /bin/cat\n  inet_listener echo {\n    port = 7\n  }\n}\n",
    )
    .expect("parses");
    let login = service(&config, "pop3-login");
    assert_eq!((login.service_count, login.process_min_avail), (0, 2));
    assert_eq!(login.service_type, "login", "the rest keeps its default");
    assert_eq!(login.inet_listeners.len(), 2);
    let echo = service(&config, "echo");
    assert_eq!(echo.executable, "inetd /bin/cat");
    assert_eq!(echo.inet_listeners[0].port, 7);
    assert_eq!(
        echo.client_limit, 0,
        "per-service default: 0 = default_client_limit"
    );
}

/// An inetd-style process takes one connection and becomes the program: the master counts
/// it with service_count 1 and client_limit 1 whatever is written, so its limit messages and
/// status name what really binds.
#[test]
fn an_inetd_service_has_service_count_and_client_limit_1() {
    let config = load_text(
        "protocols = none\nservice echo {\n  executable = inetd /bin/cat\n  client_limit = 50\n  inet_listener echo {\n    port = 7\n  }\n}\nservice plain {\n  executable = /bin/cat\n  client_limit = 50\n}\n",
    )
    .expect("parses");
    let (master, _) = master_config(&config.settings, &|_| true);
    let limits = |name: &str| {
        let s = master.services.iter().find(|s| s.name == name).expect(name);
        (s.service_count, s.client_limit)
    };
    assert_eq!(limits("echo"), (1, 1));
    assert_eq!(limits("plain"), (0, 50));
}

#[test]
fn an_unknown_key_is_an_error_with_file_and_line_and_an_obsolete_one_a_warning() {
    assert_eq!(
        error_of("# comment\nservice imap {\n  proces_limit = 5\n}\n"),
        "/etc/roost/roost.conf:3: Unknown setting: proces_limit"
    );
    assert_eq!(
        error_of("service imap {\n  unix_listener x {\n    port = 5\n  }\n}\n"),
        "/etc/roost/roost.conf:3: Unknown setting: port"
    );
    // At the top, a name that is neither roost's nor Dovecot 2.3's is a typo, as for doveconf.
    assert_eq!(
        error_of("protocols = pop3\ndefault_proces_limit = 5\n"),
        "/etc/roost/roost.conf:2: Unknown setting: default_proces_limit"
    );
    // So it is inside the filters that hold global settings, as for doveconf.
    assert_eq!(
        error_of("local 10.0.0.1 {\n  protocol pop3 {\n    pop3_uidl_formt = %u\n  }\n}\n"),
        "/etc/roost/roost.conf:3: Unknown setting: pop3_uidl_formt"
    );
    load_text(
        "protocol pop3 {\n  pop3_uidl_format = %08Xu%08Xv\n}\nplugin {\n  anything = goes\n}\n",
    )
    .expect("known names in a filter, anything in plugin { }");
    // Auth settings have no connection to filter by (doveconf's words).
    assert_eq!(
        error_of("remote 10.0.0.0/8 {\n  protocol pop3 {\n    auth_verbose = yes\n  }\n}\n"),
        "/etc/roost/roost.conf:3: Auth settings not supported inside local/remote blocks: auth_verbose"
    );
    assert_eq!(
        error_of("local 127.0.0.1 {\n  passdb {\n    driver = static\n  }\n}\n"),
        "/etc/roost/roost.conf:2: Auth settings not supported inside local/remote blocks: passdb"
    );
    load_text("remote 10.0.0.0/8 {\n  disable_plaintext_auth = no\n}\nprotocol pop3 {\n  auth_verbose = yes\n}\n")
        .expect("a login setting in remote { }, an auth setting in protocol { }");
    // An older Dovecot's name reads, with a warning that says what became of it.
    let config = load_text("login_processes_count = 3\nmail_cache_compress_min_size = 1k\n")
        .expect("parses");
    let warnings: Vec<String> = config
        .raw
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "/etc/roost/roost.conf:1: Obsolete setting login_processes_count: replaced by service *-login { process_min_avail }; roost ignores it",
            "/etc/roost/roost.conf:2: Obsolete setting mail_cache_compress_min_size: renamed mail_cache_purge_*; roost ignores it",
        ]
    );
    // Elsewhere unknown settings are kept and shown; Dovecot's settings roost does not use,
    // printed or hidden by doveconf -a, are known.
    for known in [
        "mail_cache_min_mail_count = 5",
        "managesieve_max_line_length = 65536",
    ] {
        load_text(known).expect(known);
    }
    let config =
        load_text("mail_location = maildir:~/Maildir\nplugin {\n  quota = x\n}\n").expect("parses");
    assert_eq!(
        config.settings.global.other["mail_location"],
        "maildir:~/Maildir"
    );
    assert!(print(
        &config,
        PrintMode {
            non_default: true,
            show_secrets: false
        }
    )
    .contains("plugin {\n  quota = x\n}\n"));
}

#[test]
fn syntax_errors_name_file_and_line() {
    assert_eq!(
        error_of("service imap\n"),
        "/etc/roost/roost.conf:1: Expecting '{'"
    );
    assert_eq!(error_of("foo\n"), "/etc/roost/roost.conf:1: Expecting '='");
    // Found by the bad-configuration suite: a bare `!include` said "Expecting '='".
    assert_eq!(
        error_of("!include\n"),
        "/etc/roost/roost.conf:1: !include needs a file name"
    );
    assert_eq!(
        error_of("!include_try   \n"),
        "/etc/roost/roost.conf:1: !include needs a file name"
    );
    assert_eq!(error_of("}\n"), "/etc/roost/roost.conf:1: Unexpected '}'");
    assert_eq!(
        error_of("service imap { x\n"),
        "/etc/roost/roost.conf:1: Garbage after '{'"
    );
    assert_eq!(
        error_of("service imap {\n"),
        "/etc/roost/roost.conf:1: Missing '}'"
    );
    assert_eq!(
        error_of("key = \"open\n"),
        "/etc/roost/roost.conf:1: Missing closing quote"
    );
    assert_eq!(
        error_of("service imap {\n  process_limit = many\n}\n"),
        "/etc/roost/roost.conf:2: service(imap): process_limit: Invalid number: many"
    );
    assert_eq!(
        error_of("service imap {\n  idle_kill = 60\n}\n"),
        "/etc/roost/roost.conf:2: service(imap): idle_kill: Time interval '60' is missing units (add e.g. s)"
    );
}

#[test]
fn comments_quotes_joins_and_the_ambiguous_hash() {
    let config = load_text(
        "login_greeting = \"Hello # not a comment\"\nssl_cert = </etc/ssl/x.pem # comment\nlisten = 127.0.0.1, \\\n  ::1\nbase_dir = /tmp/x#glued\n",
    )
    .expect("parses");
    let g = &config.settings.global;
    assert_eq!(g.other["login_greeting"], "Hello # not a comment");
    assert_eq!(
        g.ssl_cert, "</etc/ssl/x.pem",
        "a <file value is kept as a reference"
    );
    assert_eq!(g.listen, "127.0.0.1, ::1");
    assert_eq!(g.base_dir, "/tmp/x");
    assert_eq!(
        config.raw.warnings[0].to_string(),
        "/etc/roost/roost.conf:5: Ambiguous '#' character in line, treating it as comment. Add a space before it to remove this warning."
    );
}

#[test]
fn variables_expand_self_references_and_environment() {
    struct Env1;
    impl Env for Env1 {
        fn var(&self, name: &str) -> Option<String> {
            (name == "MAILHOST").then(|| "mx.example.org".to_owned())
        }
    }
    let text = "protocols = $protocols imap\nprotocols = $protocols pop3\nhostname = $ENV:MAILHOST\ndefault_internal_user = vmail\nservice auth {\n  user = $default_internal_user\n}\nmail_server_comment = \"$protocols\"\n";
    let config = load_str(
        "/etc/roost/roost.conf",
        text,
        &MemoryFiles::default(),
        &Env1,
    )
    .expect("parses");
    assert_eq!(
        config.settings.global.protocols, " imap pop3",
        "textual, as the original"
    );
    assert_eq!(config.settings.global.other["hostname"], "mx.example.org");
    assert_eq!(service(&config, "auth").user, "vmail");
    assert_eq!(
        config.settings.global.other["mail_server_comment"], "$protocols",
        "quoted values never expand"
    );
    assert_eq!(
        error_of("service x {\n  user = $nosuch\n}\n"),
        "/etc/roost/roost.conf:2: Unknown variable: $nosuch"
    );
}

#[test]
fn includes_glob_sorted_relative_to_the_including_file() {
    let files = MemoryFiles::new([
        (
            "/etc/roost/roost.conf",
            "!include conf.d/*.conf\n!include_try local.conf\n!include_try /nonexistent/*.conf\n",
        ),
        (
            "/etc/roost/conf.d/20-b.conf",
            "service imap {\n  process_limit = 20\n}\n",
        ),
        (
            "/etc/roost/conf.d/10-a.conf",
            "service imap {\n  process_limit = 10\n  client_limit = 3\n",
        ),
        ("/etc/roost/conf.d/10-a.conf.ext", "broken"),
        ("/etc/roost/conf.d/15-close.conf", "}\n"),
    ]);
    let config = load("/etc/roost/roost.conf", &files, &NoEnv).expect("parses");
    let imap = service(&config, "imap");
    assert_eq!(
        (imap.process_limit, imap.client_limit),
        (20, 3),
        "sorted; sections carry across files"
    );
    let missing = MemoryFiles::new([("/etc/roost/roost.conf", "!include missing.conf\n")]);
    assert_eq!(
        load("/etc/roost/roost.conf", &missing, &NoEnv)
            .expect_err("refused")
            .to_string(),
        "/etc/roost/roost.conf:1: Can't read /etc/roost/missing.conf: No such file or directory"
    );
    let looped = MemoryFiles::new([
        ("/etc/roost/roost.conf", "!include a.conf\n"),
        ("/etc/roost/a.conf", "\n!include roost.conf\n"),
    ]);
    assert_eq!(
        load("/etc/roost/roost.conf", &looped, &NoEnv)
            .expect_err("refused")
            .to_string(),
        "/etc/roost/a.conf:2: Recursive include file: /etc/roost/roost.conf"
    );
}

#[test]
fn ron_is_a_second_syntax_for_the_same_settings() {
    let config = load_text("service pop3-login {\n  service_count = 0\n}\nbase_dir = /tmp/r\n")
        .expect("parses");
    let ron_text = to_ron(&config.settings);
    let again = load_str("x.ron", &ron_text, &MemoryFiles::default(), &NoEnv).expect("RON parses");
    assert_eq!(again.settings, config.settings);
    let error = load_str(
        "x.ron",
        "(global: (base_dir: 5))",
        &MemoryFiles::default(),
        &NoEnv,
    )
    .expect_err("refused");
    assert!(error.to_string().starts_with("x.ron:1:"), "{error}");
}

#[test]
fn effective_values_apply_defaults_caps_and_protocols() {
    let config = load_text(
        "protocols = pop3\nbase_dir = /run/r\nservice imap-login {\n  client_limit = 50\n}\nservice pop3-login {\n  service_count = 0\n  client_limit = 0\n  inet_listener pop3s {\n    port = 0\n  }\n}\n",
    )
    .expect("parses");
    let (master, left_out) = master_config(&config.settings, &|s| {
        ["pop3-login", "pop3", "log"].contains(&s.name.as_str())
    });
    let names: Vec<&str> = master.services.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"pop3-login") && names.contains(&"log"));
    assert!(!names.contains(&"imap-login"), "imap is not in protocols");
    let login = master
        .services
        .iter()
        .find(|s| s.name == "pop3-login")
        .expect("pop3-login");
    assert_eq!((login.process_limit, login.client_limit), (100, 1000));
    assert_eq!(
        login.listeners.len(),
        2,
        "pop3 on '*' and '::'; pop3s disabled by port 0"
    );
    let pop3 = master
        .services
        .iter()
        .find(|s| s.name == "pop3")
        .expect("pop3");
    assert_eq!(
        (pop3.process_limit, pop3.client_limit),
        (1024, 1),
        "client_limit capped by service_count 1"
    );
    assert!(
        matches!(&pop3.listeners[0].kind, crate::setup::ListenerKind::Unix { path, .. } if path == "/run/r/login/pop3")
    );
    // Drivers find the post-login socket login/<protocol> from the login service's protocol.
    assert_eq!(
        (login.protocol.as_str(), pop3.protocol.as_str()),
        ("pop3", "pop3")
    );
    let log = master
        .services
        .iter()
        .find(|s| s.name == "log")
        .expect("log");
    assert_eq!(log.idle_kill, None);
    assert_eq!(log.protocol, "", "log serves no protocol");
    assert!(left_out
        .iter()
        .any(|l| l.to_string() == "service(anvil): no program for executable 'anvil', left out"));
    assert!(
        !left_out.iter().any(|l| l.service == "imap-login"),
        "disabled services are not reported"
    );
}

#[test]
fn checks_refuse_contradictions_with_the_originals_texts() {
    assert_eq!(
        check_errors("listen =\n"),
        vec!["/etc/roost/roost.conf:1: listen can't be set empty"]
    );
    assert_eq!(
        check_errors("first_valid_uid = 1000\nlast_valid_uid = 10\n"),
        vec!["/etc/roost/roost.conf:1: first_valid_uid can't be larger than last_valid_uid"]
    );
    assert_eq!(
        check_errors("default_login_user = dovenull\n"),
        vec!["/etc/roost/roost.conf:1: default_login_user doesn't exist: dovenull"]
    );
    assert_eq!(
        check_errors("service x {\n  executable = x\n  type = bogus\n}\n"),
        vec!["/etc/roost/roost.conf:3: service(x): Unknown service type: bogus"]
    );
    assert_eq!(
        check_errors("protocols = imap gopher\n"),
        vec!["/etc/roost/roost.conf:1: protocols: Unknown protocol: gopher"]
    );
    assert_eq!(
        check_errors("service a {\n  executable = a\n  inet_listener a {\n    port = 7\n    address = 127.0.0.1\n  }\n}\nservice b {\n  executable = b\n  inet_listener b {\n    port = 7\n    address = 127.0.0.1\n  }\n}\n"),
        vec!["/etc/roost/roost.conf:8: duplicate listener: 7:127.0.0.1 (service b; also in service a)"]
    );
    assert_eq!(
        check_errors("service x {\n  executable = x\n  unix_listener login/pop3 {\n  }\n}\n"),
        vec!["/etc/roost/roost.conf:1: duplicate listener: /run/roost/login/pop3 (service x; also in service pop3)"]
    );
    assert_eq!(
        check_errors(
            "service x {\n  executable = x\n  chroot = empty\n  drop_priv_before_exec = yes\n}\n"
        ),
        vec!["/etc/roost/roost.conf:4: service(x): drop_priv_before_exec=yes can't be used with chroot"]
    );
    assert_eq!(
        check_errors(
            "service x {\n  executable = x\n  process_limit = 2\n  process_min_avail = 3\n}\n"
        ),
        vec!["/etc/roost/roost.conf:4: service(x): process_min_avail is higher than process_limit"]
    );
    assert_eq!(
        check_errors("service x {\n  executable = x\n  vsz_limit = 512k\n}\n"),
        vec!["/etc/roost/roost.conf:3: service(x): vsz_limit is too low"]
    );
    // Found by the bad-configuration suite: one low default_vsz_limit gave twenty errors,
    // one for every catalogue service that inherits it. It is one error, said once.
    assert_eq!(
        check_errors("default_vsz_limit = 1000\nservice x {\n  executable = x\n}\n"),
        vec!["/etc/roost/roost.conf:1: default_vsz_limit is too low"]
    );
    assert_eq!(
        check_errors("service anvil {\n  process_limit = 2\n}\n"),
        vec!["/etc/roost/roost.conf:2: service(anvil): process_limit must be 1"]
    );
    assert_eq!(
        check_errors("service x {\n  executable = x\n  user = mallory\n}\n"),
        vec!["/etc/roost/roost.conf:3: service(x): User doesn't exist: mallory (See service x { user } setting)"]
    );
    assert_eq!(
        check_errors("service x {\n  executable = x\n  unix_listener s {\n    group = nosuch\n  }\n}\n"),
        vec!["/etc/roost/roost.conf:1: service(x): Group doesn't exist: nosuch (See service x { unix_listener s { group } } setting)"]
    );
    assert_eq!(
        check_errors("service log2 {\n  executable = log\n  type = log\n}\n"),
        vec!["Multiple log services specified"]
    );
}

#[test]
fn auth_and_anvil_warnings_count_with_the_originals_formulas() {
    // Seed 000: `service anvil { client_limit=200 } is lower than required under max. load (207)`
    // shape; here: imap-login process_limit 500 makes auth need 500 + 100 + 100 + 100 (lmtp) and
    // anvil 2 + 500 + 100 + 100 + 1.
    let warnings = warnings_of(
        "protocols = imap pop3 lmtp\nservice imap-login {\n  process_limit = 500\n}\nservice auth {\n  client_limit = 200\n}\nservice anvil {\n  client_limit = 200\n}\n",
        &SYSTEM,
    );
    assert_eq!(
        warnings,
        vec![
            "service auth { client_limit=200 } is lower than required under max. load (800). Counted for protocol services with service_count != 1: service imap-login { process_limit=500 } + service imap-urlauth-login { process_limit=100 } + service lmtp { process_limit=100 } + service pop3-login { process_limit=100 }".to_owned(),
            "service anvil { client_limit=200 } is lower than required under max. load (703). Counted with: service auth { process_limit=1 } + service imap-login { process_limit=500 } + service imap-urlauth-login { process_limit=100 } + service pop3-login { process_limit=100 }".to_owned(),
        ]
    );
    assert!(
        warnings_of("", &SYSTEM).is_empty(),
        "the defaults need no warning (reference §3.2 example)"
    );
}

#[test]
fn the_fd_limit_warning_names_the_setting_that_needs_it() {
    assert_eq!(
        warnings_of("", &TestSystem { fd_limit: 512 }),
        vec!["fd limit (ulimit -n) is lower than required under max. load (512 < 1000), because of default_client_limit"]
    );
    assert_eq!(
        warnings_of("service pop3-login {\n  client_limit = 5000\n  service_count = 0\n}\n", &TestSystem { fd_limit: 4096 }),
        vec!["fd limit (ulimit -n) is lower than required under max. load (4096 < 5000), because of service pop3-login { client_limit }"]
    );
}

#[test]
fn secrets_are_hidden_unless_asked() {
    let config = load_text("ssl_key = </etc/ssl/private/key.pem\n").expect("parses");
    let hidden = print(
        &config,
        PrintMode {
            non_default: true,
            show_secrets: false,
        },
    );
    assert!(
        hidden.contains("ssl_key = # hidden, use -P to show it\n"),
        "{hidden}"
    );
    let shown = print(
        &config,
        PrintMode {
            non_default: true,
            show_secrets: true,
        },
    );
    assert!(shown.contains("ssl_key = </etc/ssl/private/key.pem\n"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]
    #[test]
    fn no_text_makes_the_parser_panic(text in "(\\PC|[{}=#\"'<$\\\\\n])*") {
        let _ = load_text(&text);
    }

    #[test]
    fn no_line_soup_makes_the_parser_panic(lines in proptest::collection::vec(proptest::prop_oneof![
        proptest::prelude::Just("service a {".to_owned()),
        proptest::prelude::Just("}".to_owned()),
        proptest::prelude::Just("inet_listener {".to_owned()),
        proptest::prelude::Just("unix_listener x/y {".to_owned()),
        proptest::prelude::Just("protocol !x {".to_owned()),
        proptest::prelude::Just("!include *.conf".to_owned()),
        proptest::prelude::Just("port = 70000".to_owned()),
        proptest::prelude::Just("x = $x $y".to_owned()),
        "[a-z_]{1,8} = [ -~]{0,12}",
    ], 0..40)) {
        let text = lines.join("\n");
        if let Ok(config) = load_text(&text) {
            let _ = check(&config, &SYSTEM);
            let _ = print(&config, PrintMode { non_default: false, show_secrets: false });
            let _ = master_config(&config.settings, &|_| true);
        }
    }
}

#[test]
fn config_n_shows_only_what_differs_from_the_defaults() {
    let config = load_text(
        "base_dir = /run/roost\nbase_dir = /tmp/x\nservice imap {\n  process_limit = 1024\n}\nservice pop3-login {\n  service_count = 0\n  inet_listener pop3 {\n    port = 1110\n  }\n}\nservice echo {\n  executable = inetd /bin/cat\n}\n",
    )
    .expect("parses");
    let printed = print(
        &config,
        PrintMode {
            non_default: true,
            show_secrets: false,
        },
    );
    assert_eq!(
        printed.lines().skip(1).collect::<Vec<_>>().join("\n"),
        "base_dir = /tmp/x\nservice pop3-login {\n  inet_listener pop3 {\n    port = 1110\n  }\n  service_count = 0\n}\nservice echo {\n  executable = inetd /bin/cat\n}"
    );
}

#[test]
fn deep_nesting_and_brace_bombs_are_refused_quickly() {
    // Found by the config helper on a copy of this parser: 20,000 unclosed sections overflowed
    // the stack when the tree was dropped, and 24 brace groups in an !include_try took 28 s.
    let deep = "a {\n".repeat(20_000);
    assert_eq!(
        error_of(&deep),
        "/etc/roost/roost.conf:65: Too deeply nested sections"
    );
    let files = MemoryFiles::new([("/etc/x", "")]);
    let bomb = format!("!include /etc/{}\n", "{a,b}".repeat(24));
    let error = load_str("/etc/roost/roost.conf", &bomb, &files, &NoEnv)
        .map(|_| ())
        .expect_err("refused");
    assert!(
        error.to_string().contains("Too many {...} groups"),
        "{error}"
    );
    // !include_try ignores what it cannot include, the bomb included.
    let bomb = format!("!include_try /etc/{}\n", "{a,b}".repeat(24));
    assert!(load_str("/etc/roost/roost.conf", &bomb, &files, &NoEnv).is_ok());
}

#[test]
fn extra_groups_may_be_separated_by_commas() {
    let config =
        load_text("service x {\n  executable = x\n  extra_groups = root,nogroup mail\n}\n")
            .expect("parses");
    assert!(check(&config, &SYSTEM).is_ok());
    assert_eq!(
        check_errors("service x {\n  executable = x\n  extra_groups = root,nosuch\n}\n"),
        vec!["/etc/roost/roost.conf:3: service(x): Group doesn't exist: nosuch (See service x { extra_groups } setting)"]
    );
}

#[test]
fn anvil_runs_only_when_a_protocol_is_served() {
    let runnable =
        |s: &ServiceSettings| ["anvil", "auth", "pop3-login", "pop3"].contains(&s.name.as_str());
    let names = |text: &str| -> Vec<String> {
        let config = load_text(text).expect("parses");
        master_config(&config.settings, &runnable)
            .0
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    let with_pop3 = names("protocols = pop3\n");
    assert!(with_pop3.contains(&"anvil".to_owned()), "{with_pop3:?}");
    let without = names("protocols = none\n");
    assert!(!without.contains(&"anvil".to_owned()), "{without:?}");
    assert!(
        without.contains(&"auth".to_owned()),
        "auth stays for other clients: {without:?}"
    );
}

#[test]
fn every_unnamed_passdb_and_userdb_section_is_an_entry_of_its_own() {
    let config = load_text(
        "passdb {\n  driver = passwd-file\n  args = /etc/a\n}\npassdb {\n  driver = passwd-file\n  args = /etc/b\n}\nuserdb {\n  driver = passwd-file\n  args = /etc/u\n}\nuserdb {\n  driver = static\n  args = uid=vmail home=/var/mail/%u\n}\n",
    )
    .expect("parses");
    let args: Vec<&str> = config
        .settings
        .passdbs
        .iter()
        .map(|d| d.args.as_str())
        .collect();
    assert_eq!(args, ["/etc/a", "/etc/b"]);
    let drivers: Vec<&str> = config
        .settings
        .userdbs
        .iter()
        .map(|d| d.driver.as_str())
        .collect();
    assert_eq!(drivers, ["passwd-file", "static"]);
    assert_eq!(
        config.settings.userdbs[1].args,
        "uid=vmail home=/var/mail/%u"
    );
}

#[test]
fn a_service_without_a_name_is_refused_by_its_number() {
    // The text syntax cannot write one; RON can.
    let mut config = load_text("service echo {\n  executable = /bin/cat\n}\n").expect("parses");
    let index = config
        .settings
        .services
        .iter()
        .position(|s| s.name == "echo")
        .expect("echo");
    config.settings.services[index].name.clear();
    let ron_text = to_ron(&config.settings);
    let config = load_str("x.ron", &ron_text, &MemoryFiles::default(), &NoEnv).expect("RON parses");
    let errors = match check(&config, &SYSTEM) {
        Ok(warnings) => panic!("accepted, warnings {warnings:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert!(
        errors.contains(&format!("Service #{} is missing name", index + 1)),
        "{errors:?}"
    );
}

/// The file of [`typed_values_print_in_doveconfs_form`], and what Dovecot 2.3.19.1's
/// `doveconf -n` printed for it (its header left out).
const WRITTEN_AS_OPERATORS_WRITE: &str = "default_vsz_limit = 256M\ndefault_idle_kill = 60 secs\ndefault_process_limit = 0100\nshutdown_clients = YES\nverbose_proctitle = Y\nfirst_valid_uid = 01000\nservice imap {\n  idle_kill = 120s\n  vsz_limit = 1024M\n  process_limit = 0012\n  drop_priv_before_exec = y\n  unix_listener foo {\n    mode = 00666\n  }\n  unix_listener imap-master {\n    mode = 0\n  }\n}\nservice pop3-login {\n  inet_listener pop3 {\n    port = 0110\n    ssl = YES\n  }\n}\nservice newsvc {\n  executable = /bin/true\n  vsz_limit = 0\n  idle_kill = 7200s\n  client_limit = 0050\n}\n";
const DOVECONF_N_OF_IT: &str = "first_valid_uid = 1000\nservice imap {\n  drop_priv_before_exec = yes\n  idle_kill = 2 mins\n  process_limit = 12\n  unix_listener foo {\n    mode = 0666\n  }\n  unix_listener imap-master {\n    mode = 00\n  }\n  vsz_limit = 1 G\n}\nservice newsvc {\n  client_limit = 50\n  executable = /bin/true\n  idle_kill = 2 hours\n  vsz_limit = 0\n}\nservice pop3-login {\n  inet_listener pop3 {\n    port = 110\n    ssl = yes\n  }\n}\nverbose_proctitle = yes\n";

/// `roost config -n -P`.
const N_WITH_SECRETS: PrintMode = PrintMode {
    non_default: true,
    show_secrets: true,
};

fn printed(config: &Config, non_default: bool) -> String {
    print(
        config,
        PrintMode {
            non_default,
            show_secrets: false,
        },
    )
}

#[test]
fn typed_values_print_in_doveconfs_form() {
    // `roost config -n` printed `idle_kill = 120s` and `default_vsz_limit = 256M` as written,
    // and showed the second although it is the default: doveconf prints the value it parsed
    // and compares that with the default.
    let config = load_text(WRITTEN_AS_OPERATORS_WRITE).expect("parses");
    let ours = printed(&config, true);
    assert_eq!(
        ours.lines().skip(1).collect::<Vec<_>>().join("\n") + "\n",
        "first_valid_uid = 1000\nverbose_proctitle = yes\nservice imap {\n  drop_priv_before_exec = yes\n  idle_kill = 2 mins\n  process_limit = 12\n  unix_listener foo {\n    mode = 0666\n  }\n  unix_listener imap-master {\n    mode = 00\n  }\n  vsz_limit = 1 G\n}\nservice pop3-login {\n  inet_listener pop3 {\n    ssl = yes\n  }\n}\nservice newsvc {\n  client_limit = 50\n  executable = /bin/true\n  idle_kill = 2 hours\n  vsz_limit = 0\n}\n"
    );
    // Every line is one doveconf printed. The differences are roost's own rules of
    // config_n_shows_only_what_differs_from_the_defaults: services after the globals in the order
    // the file names them, and a listener's `port = 110` left out as the catalogue's default.
    for line in ours.lines().skip(1) {
        assert!(
            DOVECONF_N_OF_IT.lines().any(|theirs| theirs == line),
            "doveconf -n printed no {line:?}"
        );
    }
    let all = printed(&config, false);
    for line in [
        "default_idle_kill = 1 mins\n",
        "default_vsz_limit = 256 M\n",
        "default_process_limit = 100\n",
        "shutdown_clients = yes\n",
        "first_valid_uid = 1000\n",
        "verbose_proctitle = yes\n",
        "  idle_kill = 2 mins\n",
        "    mode = 0666\n",
        "    port = 110\n",
        "  vsz_limit = 0\n",
    ] {
        assert!(all.contains(line), "roost config -a lacks {line:?}:\n{all}");
    }
}

#[test]
fn values_that_are_not_typed_or_do_not_parse_print_as_written() {
    // A `$variable` in a typed setting is expanded only when the settings are derived, and an
    // unknown global or a setting of a section roost does not interpret has no type to it.
    assert_both_print(
        "mail_max_userip_connections = 010\nauth_cache_ttl = 3600s\nprotocol imap {\n  imap_idle_notify_interval = 120 secs\n}\nservice imap {\n  vsz_limit = $default_vsz_limit\n  user = 0600\n}\n",
        &[
            "mail_max_userip_connections = 010\n",
            "auth_cache_ttl = 3600s\n",
            "protocol imap {\n  imap_idle_notify_interval = 120 secs\n}\n",
            "  user = 0600\n",
            "  vsz_limit = $default_vsz_limit\n",
        ],
    );
}

/// Reads the text and checks that both `roost config -n` and `-a` print every line.
fn assert_both_print(text: &str, lines: &[&str]) {
    let config = load_text(text).expect("parses");
    for non_default in [true, false] {
        let out = printed(&config, non_default);
        for line in lines {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
    }
}

#[test]
fn a_ron_configuration_prints_in_doveconfs_form() {
    // The RON form holds numbers; printed, a vsz_limit of 0 (none) is `0` as doveconf prints it,
    // not `0 B`.
    let config =
        load_text("service imap {\n  vsz_limit = 0\n  idle_kill = 90s\n}\n").expect("parses");
    let ron_config = load_str(
        "/etc/roost/roost.ron",
        &to_ron(&config.settings),
        &MemoryFiles::default(),
        &NoEnv,
    )
    .expect("reads");
    let out = printed(&ron_config, false);
    assert!(out.contains("service imap {\n"), "{out}");
    let imap = &out[out.find("service imap {\n").expect("imap")..];
    assert!(imap.contains("  vsz_limit = 0\n"), "{imap}");
    assert!(imap.contains("  idle_kill = 90 secs\n"), "{imap}");
}

#[test]
fn every_unnamed_passdb_and_userdb_section_is_printed_in_the_files_order() {
    // Found by the round-trip property: the sections of a list share one sort key, so
    // `roost config` printed only the last passdb, and its output read back without the others
    // (they are tried in order: a lost passdb is a lost way to log in). doveconf prints each.
    assert_both_print(
        "passdb {\n  driver = pam\n}\nuserdb {\n  driver = passwd\n}\npassdb {\n  driver = passwd-file\n  args = /etc/b\n}\nuserdb {\n  driver = passwd\n}\n",
        &[
            "passdb {\n  driver = pam\n}\npassdb {\n  args = /etc/b\n  driver = passwd-file\n}\n",
            "userdb {\n  driver = passwd\n}\nuserdb {\n  driver = passwd\n}\n",
        ],
    );
}

#[test]
fn values_and_names_that_would_read_back_as_something_else_are_quoted() {
    // Found by the round-trip property: `roost config` quoted a value only for white space at
    // its ends, so a value that was written quoted could print as a comment (`"#"`), a
    // variable (`"$"`), an unclosed quote (`"'"`), or a backslash that joins the next line
    // (`"\\"`), and the output no longer read back. Each must print quoted, with the exact text
    // below, and read back to the same value; what needs no quotes stays bare, as doveconf
    // prints it.
    let config = load_text(
        "service anvil {\n  group = \"'\"\n  extra_groups = \"#\"\n  user = \"\\\\\"\n  chroot = \"$\"\n  privileged_group = a\"b\n  inet_listener \"'\" {\n  }\n  unix_listener \"a#b\" {\n  }\n  unix_listener a {\n    group = \"$default_internal_group\"\n    user = $default_internal_user\n  }\n  unix_listener \"x\\\\\" {\n  }\n}\nssl_cert = \"<not a file\"\nssl_key = </etc/roost/key.pem\nmail_location = \"maildir:~/Maildir # mine\"\n",
    )
    .expect("parses");
    let out = print(&config, N_WITH_SECRETS);
    for line in [
        "  group = \"'\"\n",
        "  extra_groups = \"#\"\n",
        "  user = \"\\\\\"\n",
        "  chroot = \"$\"\n",
        "  privileged_group = a\"b\n",
        "    group = \"$default_internal_group\"\n",
        "    user = $default_internal_user\n",
        "  inet_listener \"'\" {\n",
        "  unix_listener \"a#b\" {\n",
        "  unix_listener \"x\\\\\" {\n",
        "ssl_cert = \"<not a file\"\n",
        "ssl_key = </etc/roost/key.pem\n",
        "mail_location = \"maildir:~/Maildir # mine\"\n",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let again = load_str(
        "/etc/roost/roost.conf",
        &out,
        &MemoryFiles::default(),
        &NoEnv,
    )
    .unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(again.settings, config.settings, "{out}");
    let anvil = service(&again, "anvil");
    assert_eq!(
        (
            anvil.group.as_str(),
            anvil.extra_groups.as_str(),
            anvil.user.as_str()
        ),
        ("'", "#", "\\")
    );
    assert_eq!(anvil.chroot, "$");
}

#[test]
fn a_section_name_may_hold_equals_signs_and_braces() {
    // Found by widening the round-trip property: roost looked for the first `=` and `{`
    // anywhere in a line, so `unix_listener e=f {` read as a setting ("Invalid setting name
    // before '='") and `unix_listener "a{b" {` as garbage after '{', where the original
    // (doveconf 2.3.19.1 on these lines) reads listeners named `e=f` and `a{b`: the key is the
    // first word, and `=` must follow it. A name that starts with `=` prints quoted; bare, both
    // read that line as a setting.
    let config = load_text(
        "service foo {\n  unix_listener \"a{b\" {\n  }\n  unix_listener e=f {\n    mode = 0666\n  }\n  inet_listener \"=x\" {\n  }\n  inet_listener a{ {\n  }\n}\n",
    )
    .expect("parses");
    let foo = service(&config, "foo");
    let paths: Vec<&str> = foo.unix_listeners.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, ["a{b", "e=f"]);
    let names: Vec<&str> = foo.inet_listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["=x", "a{"]);
    let out = printed(&config, true);
    for line in [
        "  unix_listener e=f {\n    mode = 0666\n  }\n",
        "  unix_listener a{b {\n",
        "  inet_listener a{ {\n",
        "  inet_listener \"=x\" {\n",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let again = load_text(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(again.settings, config.settings);
    // What is no name keeps its error.
    for (text, error) in [
        ("a b = c\n", "Invalid setting name before '='"),
        ("= c\n", "Invalid setting name before '='"),
        ("service imap { x\n", "Garbage after '{'"),
        ("{\n", "Expecting a section name before '{'"),
    ] {
        assert_eq!(error_of(text), format!("/etc/roost/roost.conf:1: {error}"));
    }
}
