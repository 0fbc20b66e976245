//! Debian's stock Dovecot 2.3.19.1 configuration, read as it is, and printed the way the real
//! doveconf printed it (shared/fixtures: real files nobody here wrote).

use std::path::{Path, PathBuf};

use roost_core::config::{dovecot_default, load, print, Files, NoEnv, PrintMode};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/dovecot-debian-2.3.19")
}

/// The real file system, with Debian's `/usr/share/dovecot/protocols.d` answered from the
/// fixture's copy (the two protocol packages that were installed when doveconf ran).
struct FixtureFiles {
    root: PathBuf,
    /// Uncomment the defaults the stock files show as comments (see [`uncommented_defaults`]).
    uncomment_defaults: bool,
}

/// The typed settings whose defaults the stock files show as comments, written as an operator
/// writes them (`#default_vsz_limit = 256M`, `#mode = 0666`).
const TYPED_KEYS: &[&str] = &[
    "default_client_limit",
    "default_process_limit",
    "default_vsz_limit",
    "mode",
    "port",
    "process_limit",
    "process_min_avail",
    "service_count",
    "shutdown_clients",
    "ssl",
    "verbose_proctitle",
];

/// The text with every `#key = value` line of a typed setting uncommented in the two files that
/// document the master's defaults, dovecot.conf and 10-master.conf, except where the comment is
/// an example rather than the default: `#mode = 0600` for dict (whose default is 0660), and the
/// `$default_vsz_limit` lines, which doveconf itself refuses ("Invalid size"). Other files'
/// comments are examples (10-director.conf's `#mode = 0666` enables a disabled listener).
fn uncommented_defaults(path: &str, text: &str) -> String {
    if !path.ends_with("/dovecot.conf") && !path.ends_with("/10-master.conf") {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut service = "";
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = trimmed.strip_prefix("service ") {
            service = name.trim_end_matches('{').trim();
        }
        let uncommented = trimmed.strip_prefix('#').and_then(|rest| {
            let (key, value) = rest.split_once(" = ")?;
            let example =
                value.is_empty() || value.starts_with('$') || (service == "dict" && key == "mode");
            (TYPED_KEYS.contains(&key) && !example).then(|| format!("{indent}{key} = {value}"))
        });
        out.push_str(uncommented.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl FixtureFiles {
    fn map(&self, path: &str) -> PathBuf {
        match path.strip_prefix("/usr/share/dovecot/protocols.d") {
            Some(rest) => self
                .root
                .join(format!("usr-share-dovecot-protocols.d{rest}")),
            None => match path.strip_prefix("/etc/dovecot") {
                Some(rest) => self.root.join(rest.trim_start_matches('/')),
                None => PathBuf::from(path),
            },
        }
    }
}

impl Files for FixtureFiles {
    fn read_to_string(&self, path: &str) -> Result<String, String> {
        let text = std::fs::read_to_string(self.map(path)).map_err(|e| e.to_string())?;
        Ok(if self.uncomment_defaults {
            uncommented_defaults(path, &text)
        } else {
            text
        })
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(self.map(path)).map_err(|e| e.to_string())?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

/// The top-level `service NAME { ... }` blocks of a doveconf-style text, as one string each.
fn service_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line == "}" {
                blocks.extend(current.take());
            }
        } else if line.starts_with("service ") && line.ends_with('{') {
            current = Some(format!("{line}\n"));
        }
    }
    blocks
}

fn fixture_files() -> FixtureFiles {
    FixtureFiles {
        root: fixture(),
        uncomment_defaults: false,
    }
}

fn load_fixture() -> roost_core::config::Config {
    load_with(&fixture_files())
}

fn load_with(files: &FixtureFiles) -> roost_core::config::Config {
    assert!(
        files.root.is_dir(),
        "the fixtures must sit beside the repository: {}",
        files.root.display()
    );
    load("/etc/dovecot/dovecot.conf", files, &NoEnv).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn debians_stock_tree_reads_without_error_and_prints_every_service_as_doveconf_did() {
    assert_services_as_doveconf_printed(&load_fixture());
}

#[test]
fn debians_commented_defaults_written_as_operators_write_them_change_nothing() {
    // The stock files show most defaults as comments in an operator's spelling
    // (`#default_vsz_limit = 256M`). doveconf prints the values it parsed: on this tree with
    // those lines uncommented, the real doveconf -a printed the same service blocks as the
    // fixture's, its -a printed `default_vsz_limit = 256 M`, and its -n left the global
    // defaults out (it compares parsed values). Its -n did show the services' settings, as it
    // shows whatever a service block writes; roost's -n leaves out what only repeats the
    // catalogue, so here it prints exactly what it prints for the stock tree.
    let files = FixtureFiles {
        uncomment_defaults: true,
        ..fixture_files()
    };
    let master = files.read_to_string("/etc/dovecot/conf.d/10-master.conf");
    let master = master.expect("10-master.conf");
    for line in [
        "default_vsz_limit = 256M",
        "  process_limit = 1024",
        "    mode = 0666",
        "    port = 993",
        "    ssl = yes",
    ] {
        assert!(master.contains(line), "not uncommented: {line:?}");
    }
    let config = load_with(&files);
    assert_services_as_doveconf_printed(&config);
    let stock = print(&load_fixture(), NON_DEFAULT);
    assert_eq!(print(&config, NON_DEFAULT), stock);
    let all = print(&config, ALL);
    assert!(all.contains("\ndefault_vsz_limit = 256 M\n"), "{all}");
    assert_eq!(
        config.settings,
        load_fixture().settings,
        "the uncommented defaults are the defaults"
    );
}

const ALL: PrintMode = PrintMode {
    non_default: false,
    show_secrets: false,
};

const NON_DEFAULT: PrintMode = PrintMode {
    non_default: true,
    show_secrets: false,
};

/// `roost config -a` prints the same services, in the same order and with the same text, as
/// the fixture's doveconf -a.
fn assert_services_as_doveconf_printed(config: &roost_core::config::Config) {
    let printed = print(config, ALL);
    let ours = service_blocks(&printed);
    let expected_text =
        std::fs::read_to_string(fixture().join("doveconf-a-services.txt")).expect("fixture");
    let theirs = service_blocks(&expected_text);
    assert_eq!(theirs.len(), 30, "the fixture has 30 services");
    let names = |blocks: &[String]| {
        blocks
            .iter()
            .map(|b| b.lines().next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&ours),
        names(&theirs),
        "the same services in the same order"
    );
    for (a, b) in ours.iter().zip(&theirs) {
        if a != b {
            let diff: Vec<String> = a
                .lines()
                .zip(b.lines())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("roost:    {x:?}\ndoveconf: {y:?}"))
                .collect();
            panic!(
                "service differs:\n{}\n--- roost:\n{a}--- doveconf:\n{b}",
                diff.join("\n")
            );
        }
    }
}

#[test]
fn doveconf_n_prints_what_doveconf_printed_but_the_director_listeners() {
    // Debian's tree names many services but changes nothing in them, except that
    // 10-director.conf adds two listener blocks that set nothing. doveconf -n printed no service
    // at all; roost prints director with those two listeners, because they exist only because
    // of the file and `roost config -n` must read back to the same configuration (tested below).
    let config = load_fixture();
    let printed = print(&config, NON_DEFAULT);
    let ours = service_blocks(&printed);
    let expected_text = std::fs::read_to_string(fixture().join("doveconf-n.txt")).expect("fixture");
    assert!(service_blocks(&expected_text).is_empty());
    assert_eq!(
        ours,
        vec!["service director {\n  inet_listener {\n  }\n  unix_listener director-userdb {\n  }\n}\n".to_owned()]
    );
    // Everything else is what doveconf printed, line for line: the settings that differ from
    // Dovecot's defaults (not `auth_mechanisms = plain`, which 10-auth.conf only repeats), the
    // namespace with its location and prefix, its mailboxes in doveconf's order.
    let without_comments = |text: &str| -> String {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect()
    };
    assert_eq!(
        without_comments(&printed).replace(&ours[0], ""),
        without_comments(&expected_text)
    );
}

#[test]
fn what_roost_config_prints_reads_back_to_the_same_settings() {
    // `roost config -a -P` and `-n -P` are configurations themselves: reading either back gives
    // exactly the settings the stock tree gave (the config helper's property, on this parser).
    let config = load_fixture();
    for non_default in [false, true] {
        let printed = print(
            &config,
            PrintMode {
                non_default,
                show_secrets: true,
            },
        );
        let again = roost_core::config::load_str(
            "/etc/roost/printed.conf",
            &printed,
            &fixture_files(),
            &NoEnv,
        )
        .unwrap_or_else(|e| {
            panic!(
                "-{} output does not read back: {e}\n{printed}",
                if non_default { "n" } else { "a" }
            )
        });
        // (-n leaves out what equals Dovecot's default: `auth_mechanisms = plain`, which the
        // tree writes, is the same as no line at all.)
        let without_dovecot_defaults = |settings: &roost_core::settings::Settings| {
            let mut settings = settings.clone();
            settings
                .global
                .other
                .retain(|key, value| dovecot_default(key) != Some(value.as_str()));
            settings
        };
        assert_eq!(
            without_dovecot_defaults(&again.settings),
            without_dovecot_defaults(&config.settings),
            "-{} output reads back differently",
            if non_default { "n" } else { "a" }
        );
    }
}
