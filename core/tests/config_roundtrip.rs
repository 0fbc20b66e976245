//! What `roost config -a` and `-n` print is a configuration itself: read back, it gives the same
//! settings, and printed again, the same text.
//!
//! The property runs on random but valid configurations written the way operators write them:
//! several `service NAME { }` blocks, built-in names and new ones, with random limits
//! (process_min_avail ≤ process_limit), times and sizes in every unit spelling the original
//! accepts, booleans in any case, modes with extra leading zeros, unix, fifo and inet listeners
//! with random names, paths, ports, modes, ssl and haproxy, some globals and some sections roost
//! does not interpret. Strings are sometimes quoted and hold what needs quoting (`#`, `$`, quotes,
//! a trailing backslash, white space at the ends); names may hold `=` and `{`. Secrets are
//! printed (`-P`): hidden, they could not read back.
//!
//! What it found, each kept as a unit test in `core/src/config/tests.rs`: every passdb but the
//! last was lost; values and names that needed quotes printed bare; names with `=` or `{` did
//! not parse.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use roost_core::config::{dovecot_default, load_str, print, Config, MemoryFiles, NoEnv, PrintMode};
use roost_core::settings::Settings;

/// The name every text is read under, so that the printed header is the same each time.
const NAME: &str = "/etc/roost/roost.conf";

/// Built-in services, so that blocks modify the catalogue's defaults too.
const BUILT_IN: &[&str] = &[
    "anvil",
    "auth",
    "dict",
    "director",
    "imap",
    "imap-login",
    "lmtp",
    "pop3",
    "pop3-login",
    "submission-login",
];

/// Time units as the original accepts them, with the seconds each is.
const TIME_UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("secs", 1),
    ("second", 1),
    ("seconds", 1),
    ("m", 60),
    ("min", 60),
    ("mins", 60),
    ("minute", 60),
    ("minutes", 60),
    ("h", 3_600),
    ("hour", 3_600),
    ("hours", 3_600),
    ("d", 86_400),
    ("day", 86_400),
    ("days", 86_400),
    ("w", 604_800),
    ("week", 604_800),
    ("weeks", 604_800),
];

/// Size units as the original accepts them, with their shift.
const SIZE_UNITS: &[(&str, u32)] = &[
    ("", 0),
    ("B", 0),
    ("b", 0),
    ("k", 10),
    ("K", 10),
    ("KB", 10),
    ("KiB", 10),
    ("M", 20),
    ("MB", 20),
    ("MiB", 20),
    ("G", 30),
    ("GiB", 30),
    ("T", 40),
    ("TB", 40),
];

fn load(text: &str) -> Result<Config, String> {
    load_str(NAME, text, &MemoryFiles::default(), &NoEnv).map_err(|e| e.to_string())
}

/// `"text"` with `\` and `"` escaped, as an operator quotes a value.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A number, sometimes with leading zeros.
fn written_number(n: impl Strategy<Value = u32>) -> impl Strategy<Value = String> {
    (n, 0usize..3).prop_map(|(n, zeros)| format!("{}{n}", "0".repeat(zeros)))
}

/// Mostly small numbers, where the limits are interesting, and sometimes any.
fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..2000, 1 => any::<u32>()]
}

/// A time in any unit, within the original's limit of 2^32 - 1 seconds.
fn written_time() -> BoxedStrategy<String> {
    let with_unit = (select(TIME_UNITS), any::<bool>(), any::<bool>()).prop_flat_map(
        |((unit, secs), space, upper)| {
            let max = u64::from(u32::MAX) / secs;
            let unit = if upper {
                unit.to_uppercase()
            } else {
                unit.to_owned()
            };
            let space = if space { " " } else { "" };
            prop_oneof![0..200u64, 0..=max].prop_map(move |n| format!("{n}{space}{unit}"))
        },
    );
    prop_oneof![
        1 => Just("0".to_owned()),
        1 => Just("4294967295 secs".to_owned()),
        1 => (0u64..100_000).prop_map(|n| format!("{}ms", n * 1000)),
        8 => with_unit,
        1 => Just("$default_idle_kill".to_owned()),
    ]
    .boxed()
}

/// A size in any unit.
fn written_size() -> BoxedStrategy<String> {
    let with_unit = (select(SIZE_UNITS), any::<bool>()).prop_flat_map(|((unit, shift), space)| {
        let space = if space && !unit.is_empty() { " " } else { "" };
        prop_oneof![0..5000u64, 0..=(u64::MAX >> shift)]
            .prop_map(move |n| format!("{n}{space}{unit}"))
    });
    prop_oneof![
        1 => Just("0".to_owned()),
        1 => Just("18446744073709551615 B".to_owned()),
        8 => with_unit,
        1 => Just("$default_vsz_limit".to_owned()),
    ]
    .boxed()
}

fn written_bool() -> impl Strategy<Value = String> {
    select(&["yes", "no", "Yes", "No", "YES", "NO", "y", "Y"][..]).prop_map(str::to_owned)
}

/// An octal mode with one or more leading zeros.
fn written_mode() -> impl Strategy<Value = String> {
    (0u32..=0o7777, 0usize..3).prop_map(|(mode, zeros)| format!("0{}{mode:o}", "0".repeat(zeros)))
}

fn written_port() -> impl Strategy<Value = String> {
    written_number(prop_oneof![0u32..2000, 0u32..=65535])
}

/// A string value: empty, a word, a variable, or quoted text with what needs quoting.
fn written_string() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[a-z_][a-z0-9_.-]{0,8}",
        1 => select(&[
            "$default_internal_user",
            "$default_login_user",
            "$default_internal_group",
        ][..])
        .prop_map(str::to_owned),
        2 => "[ a-z#$<{}='\"\\\\\t]{0,8}".prop_map(|text| quote(&text)),
    ]
    .boxed()
}

/// A section name: a word, a path, a word with `=` or `{` (the original reads
/// `unix_listener e=f {` as a listener), or quoted text with spaces, `#`, `$`, `=`, braces and
/// quotes.
fn written_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,6}",
        2 => "[a-z]{1,4}/[a-z]{1,4}",
        1 => "[a-z][a-z={]{0,4}",
        1 => "[ a-z#$={}'\"\\\\]{1,6}".prop_map(|text| quote(&text)),
    ]
    .boxed()
}

fn setting(key: &str, value: Option<String>) -> String {
    value
        .map(|value| format!("{key} = {value}\n"))
        .unwrap_or_default()
}

/// A unix or fifo listener block.
fn file_listener() -> impl Strategy<Value = String> {
    (
        select(&["unix_listener", "fifo_listener"][..]),
        prop_oneof![
            written_name(),
            select(&["auth-userdb", "login/imap", "imap-master", "lmtp"][..])
                .prop_map(str::to_owned)
        ],
        option::of(written_mode()),
        option::of(written_string()),
        option::of(written_string()),
    )
        .prop_map(|(kind, name, mode, user, group)| {
            format!(
                "  {kind} {name} {{\n{}{}{}  }}\n",
                setting("    mode", mode),
                setting("    user", user),
                setting("    group", group)
            )
        })
}

/// An inet listener block (its name may be empty, as in Debian's 10-director.conf).
fn inet_listener() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            1 => Just(String::new()),
            1 => select(&["imap", "imaps", "pop3", "pop3s", "submission"][..]).prop_map(str::to_owned),
            2 => written_name(),
        ],
        option::of(
            select(&["", "127.0.0.1", "*, ::", "::1", "\" 127.0.0.1\""][..]).prop_map(str::to_owned),
        ),
        option::of(written_port()),
        option::of(written_bool()),
        option::of(written_bool()),
        option::of(written_bool()),
    )
        .prop_map(|(name, address, port, ssl, haproxy, reuse_port)| {
            let head = if name.is_empty() {
                "  inet_listener {\n".to_owned()
            } else {
                format!("  inet_listener {name} {{\n")
            };
            format!(
                "{head}{}{}{}{}{}  }}\n",
                setting("    address", address),
                setting("    port", port),
                setting("    ssl", ssl),
                setting("    haproxy", haproxy),
                setting("    reuse_port", reuse_port)
            )
        })
}

/// The limits of a service: process_min_avail ≤ process_limit.
fn limits() -> impl Strategy<Value = String> {
    (
        option::of(written_number(limit())),
        option::of(written_number(limit())),
        limit().prop_flat_map(|process_limit| (Just(process_limit), 0..=process_limit)),
        any::<bool>(),
    )
        .prop_map(
            |(client_limit, service_count, (process_limit, min_avail), set)| {
                let limits = if set {
                    format!(
                        "  process_limit = {process_limit}\n  process_min_avail = {min_avail}\n"
                    )
                } else {
                    String::new()
                };
                format!(
                    "{}{}{limits}",
                    setting("  client_limit", client_limit),
                    setting("  service_count", service_count)
                )
            },
        )
}

/// A `service NAME { }` block.
fn service() -> impl Strategy<Value = String> {
    let strings = (
        option::of(written_string()),
        option::of(written_string()),
        option::of(written_string()),
        option::of(prop_oneof![
            written_string(),
            select(&[".", "login", "/var/empty"][..]).prop_map(str::to_owned)
        ]),
        option::of(select(&["", "imap", "pop3", "lmtp", "\"imap\""][..]).prop_map(str::to_owned)),
        option::of(
            select(&["inetd /bin/cat", "/bin/true", "imap", "\"script -p x.sh\""][..])
                .prop_map(str::to_owned),
        ),
    );
    let typed = (
        limits(),
        option::of(written_time()),
        option::of(written_size()),
        option::of(written_bool()),
        option::of(written_bool()),
    );
    let name = prop_oneof![
        2 => select(BUILT_IN).prop_map(str::to_owned),
        2 => "[a-z][a-z0-9-]{0,8}",
        1 => written_name(),
    ];
    let listeners = vec(prop_oneof![file_listener(), inet_listener()], 0..4);
    (name, strings, typed, listeners).prop_map(
        |(
            name,
            (user, group, extra_groups, chroot, protocol, executable),
            (limits, idle_kill, vsz_limit, drop_priv, foreign),
            listeners,
        )| {
            format!(
                "service {name} {{\n{}{}{}{}{}{}{limits}{}{}{}{}{}}}\n",
                setting("  user", user),
                setting("  group", group),
                setting("  extra_groups", extra_groups),
                setting("  chroot", chroot),
                setting("  protocol", protocol),
                setting("  executable", executable),
                setting("  idle_kill", idle_kill),
                setting("  vsz_limit", vsz_limit),
                setting("  drop_priv_before_exec", drop_priv),
                setting("  foreign", foreign),
                listeners.concat()
            )
        },
    )
}

/// A global setting: roost's own, typed or not, and ones it does not know.
fn global() -> BoxedStrategy<String> {
    prop_oneof![
        (
            select(
                &[
                    "default_process_limit",
                    "default_client_limit",
                    "first_valid_uid",
                    "last_valid_uid",
                    "first_valid_gid",
                    "last_valid_gid"
                ][..]
            ),
            written_number(limit())
        )
            .prop_map(|(key, value)| format!("{key} = {value}\n")),
        written_time()
            .prop_filter("not itself", |t| !t.starts_with('$'))
            .prop_map(|value| format!("default_idle_kill = {value}\n")),
        written_size()
            .prop_filter("not itself", |t| !t.starts_with('$'))
            .prop_map(|value| format!("default_vsz_limit = {value}\n")),
        (
            select(&["shutdown_clients", "verbose_proctitle"][..]),
            written_bool()
        )
            .prop_map(|(key, value)| format!("{key} = {value}\n")),
        select(&["yes", "no", "required"][..]).prop_map(|value| format!("ssl = {value}\n")),
        (
            select(
                &[
                    "default_internal_user",
                    "default_login_user",
                    "default_internal_group",
                    "instance_name",
                    "base_dir",
                    "mail_location",
                    "mail_plugins",
                    "ssl_key",
                    "auth_mechanisms"
                ][..]
            ),
            written_string(),
        )
            .prop_map(|(key, value)| format!("{key} = {value}\n")),
        select(
            &[
                "protocols = imap pop3",
                "protocols = \" imap pop3\"",
                "protocols = $protocols submission",
                "protocols = none",
                "listen = 127.0.0.1",
                "listen = *, ::"
            ][..]
        )
        .prop_map(|line| format!("{line}\n")),
    ]
    .boxed()
}

/// A section roost does not interpret (passdb and userdb are read for their driver and args).
fn section() -> impl Strategy<Value = String> {
    select(&[
        "passdb {\n  driver = pam\n}\n",
        "passdb {\n  driver = passwd-file\n  args = scheme=CRYPT /etc/roost/users\n}\n",
        "userdb {\n  driver = passwd\n}\n",
        "userdb {\n  driver = static\n  args = uid=vmail home=/var/mail/%u\n}\n",
        "protocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}\n",
        "namespace inbox {\n  inbox = yes\n  mailbox \"Sent Messages\" {\n    special_use = \\Sent\n  }\n}\n",
        "plugin {\n  quota = \"maildir:User quota\"\n  quota_rule = *:storage=1G\n}\n",
    ][..])
    .prop_map(str::to_owned)
}

/// A whole configuration: globals, sections and services in any order.
fn configuration() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![3 => global(), 1 => section().boxed(), 3 => service().boxed()],
        0..12,
    )
    .prop_map(|blocks| blocks.concat())
}

/// The settings with the services, and each service's listeners of one kind, in name order.
/// `-a` prints them sorted by name, as doveconf does, so new services and new listeners read
/// back in that order rather than the file's. Which comes first is no setting: it numbers the
/// services, and the listeners' fds, which children find by name (LISTEN_FDNAMES). A setting
/// roost does not use, written at Dovecot's default, is as good as unwritten (`-n` leaves it
/// out, as doveconf does).
fn by_name(settings: &Settings) -> Settings {
    let mut settings = settings.clone();
    settings
        .global
        .other
        .retain(|key, value| dovecot_default(key) != Some(value.as_str()));
    settings.services.sort_by(|a, b| a.name.cmp(&b.name));
    for service in &mut settings.services {
        service.unix_listeners.sort_by(|a, b| a.path.cmp(&b.path));
        service.fifo_listeners.sort_by(|a, b| a.path.cmp(&b.path));
        service.inet_listeners.sort_by(|a, b| a.name.cmp(&b.name));
    }
    settings
}

/// Prints, reads the printed text back, and compares: the same settings, and the same text
/// printed again.
fn assert_reads_back(config: &Config, non_default: bool) -> Result<Config, TestCaseError> {
    let mode = PrintMode {
        non_default,
        show_secrets: true,
    };
    let flag = if non_default { "-n" } else { "-a" };
    let printed = print(config, mode);
    let again = load(&printed).map_err(|e| {
        TestCaseError::fail(format!("{flag} output does not read back: {e}\n{printed}"))
    })?;
    prop_assert_eq!(
        by_name(&again.settings),
        by_name(&config.settings),
        "{} output reads back differently:\n{}",
        flag,
        printed
    );
    prop_assert_eq!(
        print(&again, mode),
        printed,
        "{} printed again differs",
        flag
    );
    Ok(again)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn roost_config_output_reads_back_to_the_same_settings_and_text(text in configuration()) {
        let config = load(&text).map_err(|e| TestCaseError::fail(format!("the generated configuration is refused: {e}\n{text}")))?;
        assert_reads_back(&config, false)?;
        let from_n = assert_reads_back(&config, true)?;
        // What -n leaves out is the defaults: printed in full, the two are the same, but for
        // the lines that write Dovecot's default of a setting roost does not use.
        let all = PrintMode { non_default: false, show_secrets: true };
        let without_dovecot_defaults = |printed: String| -> String {
            printed
                .lines()
                .filter(|line| {
                    line.split_once(" = ")
                        .is_none_or(|(key, value)| dovecot_default(key) != Some(value))
                })
                .map(|line| format!("{line}\n"))
                .collect()
        };
        prop_assert_eq!(
            without_dovecot_defaults(print(&from_n, all)),
            without_dovecot_defaults(print(&config, all)),
            "-n left out more than defaults"
        );
    }
}
