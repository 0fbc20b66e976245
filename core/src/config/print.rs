//! `roost config`: the configuration printed as doveconf prints it (reference §4.8), so that an
//! operator can compare it with what the original showed.
//!
//! Order: doveconf sorts by the full path of each setting with `/` between the parts
//! (`service/auth-worker/...` comes before `service/auth/...` because `-` sorts before `/`), and
//! roost does the same. `-n` prints the global settings that differ from their defaults and the
//! sections of the file, then the services the file names, in the order it first named them,
//! with what it set in them.
//!
//! Values: a setting whose type roost knows (a time, a size, a boolean, a mode, a number) is
//! printed in doveconf's form, from the value it parses to (`60s` → `1 mins`, `256M` →
//! `256 M`, see [`super::value`]), and `-n` compares that form with the default's, so
//! `default_vsz_limit = 256M` is not shown, as doveconf does not show it. Strings, unknown
//! settings and values that do not parse (a `$variable`) are printed as written.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::value::ValueType;
use super::{
    global_defaults, global_type, service_type, Config, Generic, GenericEntry, RawConfig,
    RawListener, RawService, RawValue, SECRET_SETTINGS,
};

/// What `roost config` prints.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PrintMode {
    /// `-n`: only what differs from the defaults. Otherwise every setting (`-a`).
    pub non_default: bool,
    /// `-P`: show secrets.
    pub show_secrets: bool,
}

/// One printable item at some level, with its sort key.
enum Item<'a> {
    Setting(&'a str, RawValue),
    Generic(&'a Generic),
    Service(&'a RawService, bool),
}

/// Prints the configuration as doveconf does.
pub fn print(config: &Config, mode: PrintMode) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# roost {}: {}",
        env!("CARGO_PKG_VERSION"),
        config.path
    );
    let raw = normalised(&config.raw);
    let defaults = global_defaults();
    // Keyed by the sort key and, for the sections, their place in the file: unnamed passdb and
    // userdb sections are a list whose entries share a key, printed in the file's order as
    // doveconf prints them.
    let mut items: BTreeMap<(String, usize), Item<'_>> = BTreeMap::new();
    if mode.non_default {
        for (key, value) in &raw.globals {
            let default = defaults
                .get(key.as_str())
                .copied()
                .or_else(|| super::dovecot_default(key));
            if default != Some(value.text.as_str()) {
                items.insert((key.clone(), 0), Item::Setting(key, value.clone()));
            }
        }
    } else {
        for (key, value) in &defaults {
            let value = RawValue::default(value);
            items.insert(((*key).to_owned(), 0), Item::Setting(key, value));
        }
        for (key, value) in &raw.globals {
            items.insert((key.clone(), 0), Item::Setting(key, value.clone()));
        }
    }
    for (place, section) in raw.sections.iter().enumerate() {
        if !mode.non_default || !is_empty(section) {
            let key = (section_key(&section.kind, &section.name), place);
            items.insert(key, Item::Generic(section));
        }
    }
    if !mode.non_default {
        for service in &raw.services {
            let key = (section_key("service", &service.name), 0);
            items.insert(key, Item::Service(service, false));
        }
    }
    for item in items.values() {
        print_item(&mut out, item, 0, mode);
    }
    if mode.non_default {
        // What the catalogue says, to leave out what the file only repeats.
        let mut catalogue =
            super::parse::parse_catalogue(&super::MemoryFiles::default(), super::CATALOGUE)
                .unwrap_or_default();
        catalogue.iter_mut().for_each(normalise_service);
        for name in &raw.mention_order {
            let Some(service) = raw.services.iter().find(|s| &s.name == name) else {
                continue;
            };
            let default = catalogue.iter().find(|s| &s.name == name);
            if let Some(trimmed) = only_differences(service, default) {
                print_item(&mut out, &Item::Service(&trimmed, true), 0, mode);
            }
        }
    }
    out
}

/// The configuration with every value whose type roost knows in doveconf's form.
fn normalised(raw: &RawConfig) -> RawConfig {
    let mut raw = raw.clone();
    for (key, value) in &mut raw.globals {
        normalise(value, global_type(key));
    }
    raw.services.iter_mut().for_each(normalise_service);
    raw
}

fn normalise_service(service: &mut RawService) {
    for (key, value) in &mut service.settings {
        normalise(value, service_type(key));
    }
    for listener in &mut service.listeners {
        let listener_type = listener.listener_type;
        for (key, value) in &mut listener.settings {
            normalise(value, listener_type.value_type(key));
        }
    }
}

/// A typed value that parses is replaced by doveconf's form of it (which has no `$`, so it no
/// longer needs quotes); anything else is kept as written.
fn normalise(value: &mut RawValue, value_type: Option<ValueType>) {
    if let Some(text) = value_type.and_then(|t| t.normalise(&value.text)) {
        value.text = text;
        value.literal = false;
    }
}

/// The settings and listeners of a service that differ from its default; `None` if nothing
/// does (a new service always differs).
fn only_differences(service: &RawService, default: Option<&RawService>) -> Option<RawService> {
    let differs = |value: &super::RawValue, default: Option<&super::RawValue>| {
        value.origin.is_some() && default.is_none_or(|d| d.text != value.text)
    };
    let mut trimmed = service.clone();
    trimmed
        .settings
        .retain(|key, value| differs(value, default.and_then(|d| d.settings.get(key))));
    trimmed.listeners.retain_mut(|listener| {
        let default_listener = default.and_then(|d| {
            d.listeners
                .iter()
                .find(|l| l.listener_type == listener.listener_type && l.name == listener.name)
        });
        listener.settings.retain(|key, value| {
            differs(value, default_listener.and_then(|l| l.settings.get(key)))
        });
        // A listener the defaults do not have is shown even when it sets nothing: it exists
        // because of the file, and the output must read back to the same configuration. The
        // real doveconf -n leaves such blocks out (Debian's 10-director.conf adds two); roost
        // deliberately does not.
        default_listener.is_none() || !listener.settings.is_empty()
    });
    let is_new = default.is_none();
    (is_new || !trimmed.settings.is_empty() || !trimmed.listeners.is_empty()).then_some(trimmed)
}

fn is_empty(section: &Generic) -> bool {
    section
        .entries
        .iter()
        .all(|e| matches!(e, GenericEntry::Section(s) if is_empty(s)))
}

/// The sort key of a section: `kind/name/` (the trailing `/` is what puts `auth-worker` first),
/// with the name escaped as doveconf escapes it in its keys (`\\`, and `=`, `/`, space and `,`
/// as `\e`, `\s`, `\_` and `\+`), which puts `mailbox Sent` before `mailbox "Sent Messages"`.
fn section_key(kind: &str, name: &str) -> String {
    if name.is_empty() {
        return format!("{kind}/");
    }
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '=' => escaped.push_str("\\e"),
            '/' => escaped.push_str("\\s"),
            ' ' => escaped.push_str("\\_"),
            ',' => escaped.push_str("\\+"),
            c => escaped.push(c),
        }
    }
    format!("{kind}/{escaped}/")
}

/// `"text"`, with `\\`, `\"` and line breaks escaped as the parser reads them back.
fn quoted(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// Whether a text would read back as something else without quotes: white space at either end
/// (trimmed), `#` (a comment), a line break, a quote at the start (taken for quotes), or a
/// backslash at the end (which joins the next line).
fn needs_quotes(text: &str) -> bool {
    text != text.trim()
        || text.contains(['#', '\n'])
        || text.starts_with(['"', '\''])
        || text.ends_with('\\')
}

fn quote_name(name: &str) -> String {
    // A name with white space inside is quoted too, as doveconf does (`mailbox "Sent Messages"`),
    // and one that starts with `=`, which would make the line a setting.
    if name.is_empty()
        || name.contains(char::is_whitespace)
        || name.contains('"')
        || name.starts_with('=')
        || needs_quotes(name)
    {
        quoted(name)
    } else {
        name.to_owned()
    }
}

fn header(out: &mut String, indent: usize, kind: &str, name: &str) {
    let pad = "  ".repeat(indent);
    if name.is_empty() {
        let _ = writeln!(out, "{pad}{kind} {{");
    } else {
        let _ = writeln!(out, "{pad}{kind} {} {{", quote_name(name));
    }
}

/// Prints `key = value`. doveconf quotes a value with `#` or white space at either end; roost
/// quotes every value that would otherwise read back as something else (see [`needs_quotes`]),
/// and a value that was quoted and holds `$` or starts with `<`, which unquoted would be a
/// variable or a file to read. (doveconf prints `user = "$x"` as `user = $x`, which reads back
/// as a variable; the output of `roost config` reads back to the same configuration.)
fn setting(out: &mut String, indent: usize, key: &str, value: &RawValue, mode: PrintMode) {
    let pad = "  ".repeat(indent);
    let text = value.text.as_str();
    if !mode.show_secrets
        && !text.is_empty()
        && SECRET_SETTINGS
            .iter()
            .any(|s| key == *s || key.ends_with("_password"))
    {
        let _ = writeln!(out, "{pad}{key} = # hidden, use -P to show it");
    } else if needs_quotes(text) || (value.literal && (text.contains('$') || text.starts_with('<')))
    {
        let _ = writeln!(out, "{pad}{key} = {}", quoted(text));
    } else {
        let _ = writeln!(out, "{pad}{key} = {text}");
    }
}

fn print_item(out: &mut String, item: &Item<'_>, indent: usize, mode: PrintMode) {
    match item {
        Item::Setting(key, value) => setting(out, indent, key, value, mode),
        Item::Generic(section) => {
            header(out, indent, &section.kind, &section.name);
            let mut entries: BTreeMap<String, Item<'_>> = BTreeMap::new();
            for entry in &section.entries {
                match entry {
                    GenericEntry::Setting(key, value) => {
                        entries.insert(key.clone(), Item::Setting(key, value.clone()));
                    }
                    GenericEntry::Section(sub) => {
                        if !mode.non_default || !is_empty(sub) {
                            entries.insert(section_key(&sub.kind, &sub.name), Item::Generic(sub));
                        }
                    }
                }
            }
            if section.kind == "namespace" {
                // doveconf shows a namespace's location and prefix even when unset (the
                // fixture's doveconf -n: `location = ` and `prefix = ` in namespace inbox).
                for key in ["location", "prefix"] {
                    entries
                        .entry(key.to_owned())
                        .or_insert_with(|| Item::Setting(key, RawValue::default("")));
                }
            }
            for entry in entries.values() {
                print_item(out, entry, indent + 1, mode);
            }
            let _ = writeln!(out, "{}}}", "  ".repeat(indent));
        }
        Item::Service(service, only_set) => print_service(out, service, *only_set, indent, mode),
    }
}

fn print_service(
    out: &mut String,
    service: &RawService,
    only_set: bool,
    indent: usize,
    mode: PrintMode,
) {
    header(out, indent, "service", &service.name);
    let mut lines: BTreeMap<String, Option<&RawListener>> = BTreeMap::new();
    for (key, value) in &service.settings {
        if !only_set || value.origin.is_some() {
            lines.insert(key.clone(), None);
        }
    }
    for listener in &service.listeners {
        lines.insert(
            section_key(listener.listener_type.section(), &listener.name),
            Some(listener),
        );
    }
    for (key, listener) in &lines {
        match listener {
            None => setting(out, indent + 1, key, &service.settings[key], mode),
            Some(listener) => {
                header(
                    out,
                    indent + 1,
                    listener.listener_type.section(),
                    &listener.name,
                );
                for (key, value) in &listener.settings {
                    if !only_set || value.origin.is_some() {
                        setting(out, indent + 2, key, value, mode);
                    }
                }
                let _ = writeln!(out, "{}}}", "  ".repeat(indent + 1));
            }
        }
    }
    let _ = writeln!(out, "{}}}", "  ".repeat(indent));
}
