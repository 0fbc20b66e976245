//! The configuration language of the seeds (reference §6.1), parsed into a [`RawConfig`]: every
//! value kept as written (after self-reference expansion), with the file and line it came from.
//!
//! Lines: `key = value`, `type [name] {`, `}`, `!include PATTERN`, `!include_try PATTERN`,
//! comments, and a trailing backslash that joins the next line. `service`, and the listener
//! sections inside it, are merged into the catalogue of default services; every other section
//! (`protocol`, `passdb`, `namespace`, `plugin`, ...) is kept as written for printing.

use super::glob;
use super::{ConfigError, GlobalName, ParseWarning};
use super::{
    Files, Generic, GenericEntry, ListenerType, Origin, RawConfig, RawListener, RawService,
    RawValue, SERVICE_KEYS,
};

/// Includes nest at most this deep (a loop is refused earlier; this bounds a long chain).
const MAX_INCLUDE_DEPTH: usize = 32;

/// The sections that hold global settings for some connections (Dovecot's filters).
const FILTERS: [&str; 3] = ["protocol", "local", "remote"];

/// Auth settings apply to the auth process, which has no connection to filter by: doveconf
/// refuses them inside `local` and `remote`, in these words.
fn auth_in_connection_filter(origin: &Origin, what: &str) -> ConfigError {
    ConfigError::syntax(
        origin,
        &format!("Auth settings not supported inside local/remote blocks: {what}"),
    )
}

/// Sections nest at most this deep. Found by the config helper: 20,000 unclosed `a {` lines
/// built a tree so deep that dropping it overflowed the stack.
const MAX_SECTION_DEPTH: usize = 64;

/// Where a line's settings go.
#[derive(Clone, Debug)]
enum Scope {
    /// Global settings.
    Global,
    /// Inside `service NAME { }`: the index into `RawConfig::services`.
    Service(usize),
    /// Inside a listener of a service.
    Listener(usize, usize),
    /// Inside a generic section: the path of indexes from `RawConfig::sections`.
    Generic(Vec<usize>),
}

/// One open section, for `}` and for error messages.
#[derive(Clone, Debug)]
struct Open {
    scope: Scope,
    origin: Origin,
}

/// The parser's state across included files.
pub(super) struct Parser<'a> {
    files: &'a dyn Files,
    config: RawConfig,
    stack: Vec<Open>,
    include_stack: Vec<String>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(files: &'a dyn Files, config: RawConfig) -> Parser<'a> {
        Parser {
            files,
            config,
            stack: Vec::new(),
            include_stack: Vec::new(),
        }
    }

    /// Parses the text of one file (the top-level file, or the catalogue).
    pub(super) fn parse_text(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        self.include_stack.push(path.to_owned());
        let result = self.parse_lines(path, text);
        self.include_stack.pop();
        result
    }

    /// Ends parsing: every section must be closed.
    pub(super) fn finish(self) -> Result<RawConfig, ConfigError> {
        if let Some(open) = self.stack.last() {
            return Err(ConfigError::syntax(&open.origin, "Missing '}'"));
        }
        Ok(self.config)
    }

    fn parse_lines(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        let mut joined = String::new();
        let mut first_line = 0u32;
        for (index, raw) in text.lines().enumerate() {
            let number = index as u32 + 1;
            if joined.is_empty() {
                first_line = number;
            }
            let line = raw.trim_end();
            if let Some(head) = line.strip_suffix('\\') {
                joined.push_str(head.trim());
                joined.push(' ');
                continue;
            }
            joined.push_str(line.trim_start());
            let full = std::mem::take(&mut joined);
            let origin = Origin {
                file: path.to_owned(),
                line: first_line,
            };
            self.parse_line(&full, origin)?;
        }
        if !joined.is_empty() {
            let origin = Origin {
                file: path.to_owned(),
                line: first_line,
            };
            self.parse_line(&joined, origin)?;
        }
        Ok(())
    }

    fn parse_line(&mut self, line: &str, origin: Origin) -> Result<(), ConfigError> {
        let line = self.strip_comment(line, &origin);
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        // A bare `!include` read as an unknown setting ("Expecting '='"), which hid the mistake.
        if line == "!include" || line == "!include_try" {
            return Err(ConfigError::syntax(&origin, "!include needs a file name"));
        }
        if let Some(rest) = line.strip_prefix("!include_try") {
            if rest.starts_with(char::is_whitespace) {
                return self.include(rest.trim(), true, &origin);
            }
        }
        if let Some(rest) = line.strip_prefix("!include") {
            if rest.starts_with(char::is_whitespace) {
                return self.include(rest.trim(), false, &origin);
            }
        }
        if line == "}" {
            return match self.stack.pop() {
                Some(_) => Ok(()),
                None => Err(ConfigError::syntax(&origin, "Unexpected '}'")),
            };
        }
        // As the original reads a line: the key is the first word (up to white space or `=`);
        // an `=` right after it makes a setting, and otherwise a line ending in `{` opens a
        // section whose name is everything between, so `unix_listener e=f {` and
        // `unix_listener "a{b" {` name listeners. (roost looked for the first `=` and `{`
        // anywhere in the line, and refused both.)
        let word_end = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        if let Some(value) = line[word_end..].trim_start().strip_prefix('=') {
            let key = &line[..word_end];
            if key.is_empty() {
                return Err(ConfigError::syntax(
                    &origin,
                    "Invalid setting name before '='",
                ));
            }
            let value = unquote(value.trim(), &origin)?;
            return self.set(key, value, origin);
        }
        if let Some(head) = line.strip_suffix('{') {
            let head = head.trim();
            let (kind, name) = match head.split_once(char::is_whitespace) {
                Some((kind, name)) => (kind, unquote(name.trim(), &origin)?.text),
                None => (head, String::new()),
            };
            if kind.is_empty() {
                return Err(ConfigError::syntax(
                    &origin,
                    "Expecting a section name before '{'",
                ));
            }
            return self.open(kind, &name, origin);
        }
        let eq = line.find('=');
        let brace = line.find('{');
        let message = match (eq, brace) {
            (Some(eq), brace) if brace.is_none_or(|b| eq < b) => "Invalid setting name before '='",
            (_, Some(_)) => "Garbage after '{'",
            (None, None) if line.split_whitespace().nth(1).is_some() => "Expecting '{'",
            _ => "Expecting '='",
        };
        Err(ConfigError::syntax(&origin, message))
    }

    /// Removes a `#` comment outside quotes; a `#` glued to a word warns, as in the original.
    fn strip_comment<'l>(&mut self, line: &'l str, origin: &Origin) -> &'l str {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut previous = ' ';
        for (at, c) in line.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' && quote.is_some() {
                escaped = true;
            } else if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
            } else if c == '"' || c == '\'' {
                quote = Some(c);
            } else if c == '#' {
                if !previous.is_whitespace() {
                    self.config.warnings.push(ParseWarning {
                        origin: origin.clone(),
                        message: "Ambiguous '#' character in line, treating it as comment. Add a space before it to remove this warning.".to_owned(),
                    });
                }
                return &line[..at];
            }
            previous = c;
        }
        line
    }

    fn include(
        &mut self,
        pattern: &str,
        try_only: bool,
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        if pattern.is_empty() {
            return Err(ConfigError::syntax(origin, "!include needs a file name"));
        }
        let dir = parent_dir(&origin.file);
        let full = if pattern.starts_with('/') {
            pattern.to_owned()
        } else {
            join(&dir, pattern)
        };
        let paths = match glob::expand(self.files, &full) {
            Ok(paths) => paths,
            Err(error) if try_only => {
                let _ = error;
                return Ok(());
            }
            Err(error) => return Err(ConfigError::syntax(origin, &error)),
        };
        if paths.is_empty() && !try_only {
            return Err(ConfigError::syntax(
                origin,
                &format!("No matches for !include {full}"),
            ));
        }
        for path in paths {
            if self.include_stack.contains(&path) {
                return Err(ConfigError::syntax(
                    origin,
                    &format!("Recursive include file: {path}"),
                ));
            }
            if self.include_stack.len() >= MAX_INCLUDE_DEPTH {
                return Err(ConfigError::syntax(origin, "Includes nest too deep"));
            }
            let text = match self.files.read_to_string(&path) {
                Ok(text) => text,
                Err(_) if try_only => continue,
                Err(error) => {
                    return Err(ConfigError::syntax(
                        origin,
                        &format!("Can't read {path}: {error}"),
                    ))
                }
            };
            self.parse_text(&path, &text)?;
        }
        Ok(())
    }

    fn scope(&self) -> Scope {
        self.stack
            .last()
            .map(|open| open.scope.clone())
            .unwrap_or(Scope::Global)
    }

    fn open(&mut self, kind: &str, name: &str, origin: Origin) -> Result<(), ConfigError> {
        if self.stack.len() >= MAX_SECTION_DEPTH {
            return Err(ConfigError::syntax(&origin, "Too deeply nested sections"));
        }
        let scope =
            match (self.scope(), kind) {
                (Scope::Global, "service") => {
                    if name.is_empty() {
                        return Err(ConfigError::syntax(&origin, "service needs a name"));
                    }
                    Scope::Service(self.config.service_index(name, &origin))
                }
                (Scope::Service(service), _) => {
                    let Some(listener_type) = ListenerType::from_section(kind) else {
                        return Err(ConfigError::syntax(
                            &origin,
                            &format!("Unknown section in service: {kind}"),
                        ));
                    };
                    let raw = &mut self.config.services[service];
                    let index = match raw
                        .listeners
                        .iter()
                        .position(|l| l.listener_type == listener_type && l.name == name)
                    {
                        Some(index) => index,
                        None => {
                            raw.listeners.push(RawListener::new(
                                listener_type,
                                name,
                                Some(origin.clone()),
                            ));
                            raw.listeners.len() - 1
                        }
                    };
                    raw.mentioned.get_or_insert_with(|| origin.clone());
                    Scope::Listener(service, index)
                }
                (Scope::Listener(..), _) => {
                    return Err(ConfigError::syntax(
                        &origin,
                        &format!("Unknown section in listener: {kind}"),
                    ));
                }
                (Scope::Global, _) => {
                    let sections = &mut self.config.sections;
                    // Unnamed passdb and userdb sections are lists, one entry each, tried in
                    // order (as doveconf prints them); other sections merge by kind and name.
                    let listed = name.is_empty() && (kind == "passdb" || kind == "userdb");
                    let index = match sections
                        .iter()
                        .position(|s| !listed && s.kind == kind && s.name == name)
                    {
                        Some(index) => index,
                        None => {
                            sections.push(Generic::new(kind, name));
                            sections.len() - 1
                        }
                    };
                    Scope::Generic(vec![index])
                }
                (Scope::Generic(path), _) => {
                    if (kind == "passdb" || kind == "userdb")
                        && self.config.within_connection_filter(&path)
                    {
                        return Err(auth_in_connection_filter(&origin, kind));
                    }
                    let parent = self.config.generic_mut(&path);
                    let index = match parent.entries.iter().position(
                    |e| matches!(e, GenericEntry::Section(s) if s.kind == kind && s.name == name),
                ) {
                    Some(index) => index,
                    None => {
                        parent.entries.push(GenericEntry::Section(Generic::new(kind, name)));
                        parent.entries.len() - 1
                    }
                };
                    let mut path = path;
                    path.push(index);
                    Scope::Generic(path)
                }
            };
        self.stack.push(Open { scope, origin });
        Ok(())
    }

    fn set(&mut self, key: &str, value: Quoted, origin: Origin) -> Result<(), ConfigError> {
        let scope = self.scope();
        let previous = self.current_value(&scope, key);
        let literal = value.quoted;
        let text = if literal {
            value.text
        } else {
            expand_self(key, &value.text, &previous)
        };
        let raw = RawValue {
            text,
            origin: Some(origin.clone()),
            literal,
        };
        match scope {
            Scope::Global => {
                self.check_global_name(key, &origin)?;
                self.config.globals.insert(key.to_owned(), raw);
            }
            Scope::Service(service) => {
                if !SERVICE_KEYS.contains(&key) {
                    return Err(ConfigError::syntax(
                        &origin,
                        &format!("Unknown setting: {key}"),
                    ));
                }
                let service = &mut self.config.services[service];
                service.settings.insert(key.to_owned(), raw);
            }
            Scope::Listener(service, listener) => {
                let listener = &mut self.config.services[service].listeners[listener];
                if !listener.listener_type.keys().contains(&key) {
                    return Err(ConfigError::syntax(
                        &origin,
                        &format!("Unknown setting: {key}"),
                    ));
                }
                listener.settings.insert(key.to_owned(), raw);
            }
            Scope::Generic(path) => {
                // A filter (`protocol pop3 { }`, `local 10.0.0.1 { }`, `remote ... { }`) holds
                // global settings for some connections: its names are checked as at the top.
                if FILTERS.contains(&self.config.generic(&path).kind.as_str()) {
                    self.check_global_name(key, &origin)?;
                }
                if key.starts_with("auth_") && self.config.within_connection_filter(&path) {
                    return Err(auth_in_connection_filter(&origin, key));
                }
                let section = self.config.generic_mut(&path);
                let existing = section.entries.iter_mut().find_map(|e| match e {
                    GenericEntry::Setting(k, v) if k == key => Some(v),
                    _ => None,
                });
                match existing {
                    Some(value) => *value = raw,
                    None => section
                        .entries
                        .push(GenericEntry::Setting(key.to_owned(), raw)),
                }
            }
        }
        Ok(())
    }

    /// A top-level (or filter's) setting name: roost's or Dovecot 2.3's passes, an older
    /// Dovecot's passes with a warning, anything else is a typo.
    fn check_global_name(&mut self, key: &str, origin: &Origin) -> Result<(), ConfigError> {
        match super::global_name(key) {
            GlobalName::Known => Ok(()),
            GlobalName::Obsolete(became) => {
                self.config.warnings.push(ParseWarning {
                    origin: origin.clone(),
                    message: format!("Obsolete setting {key}: {became}; roost ignores it"),
                });
                Ok(())
            }
            GlobalName::Unknown => Err(ConfigError::syntax(
                origin,
                &format!("Unknown setting: {key}"),
            )),
        }
    }

    /// The value a self-reference (`key = $key more`) expands to: the current section's value,
    /// else the enclosing one's.
    fn current_value(&self, scope: &Scope, key: &str) -> String {
        let found = match scope {
            Scope::Global => self.config.globals.get(key).map(|v| v.text.clone()),
            Scope::Service(service) => self.config.services[*service]
                .settings
                .get(key)
                .map(|v| v.text.clone()),
            Scope::Listener(service, listener) => self.config.services[*service].listeners
                [*listener]
                .settings
                .get(key)
                .map(|v| v.text.clone()),
            Scope::Generic(path) => {
                let section = self.config.generic(path);
                section.entries.iter().find_map(|e| match e {
                    GenericEntry::Setting(k, v) if k == key => Some(v.text.clone()),
                    _ => None,
                })
            }
        };
        found
            .or_else(|| match scope {
                Scope::Global => None,
                _ => self.config.globals.get(key).map(|v| v.text.clone()),
            })
            .unwrap_or_default()
    }
}

/// A value and whether it was quoted (quoted values are never expanded).
pub(super) struct Quoted {
    pub(super) text: String,
    pub(super) quoted: bool,
}

/// Removes matching quotes and unescapes `\\`, `\"`, `\'`, `\n`, `\t`.
fn unquote(value: &str, origin: &Origin) -> Result<Quoted, ConfigError> {
    let bytes = value.as_bytes();
    let quoted = bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'\'')
        && bytes[bytes.len() - 1] == bytes[0];
    if !quoted {
        if value.starts_with('"') || value.starts_with('\'') {
            return Err(ConfigError::syntax(origin, "Missing closing quote"));
        }
        return Ok(Quoted {
            text: value.to_owned(),
            quoted: false,
        });
    }
    let inner = &value[1..value.len() - 1];
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some(other) => text.push(other),
                None => text.push('\\'),
            }
        } else {
            text.push(c);
        }
    }
    Ok(Quoted { text, quoted: true })
}

/// `key = $key more`: the word `$key` is replaced by the current value of `key` (the original
/// does this textually, so `protocols = $protocols imap` on an unset value gives " imap").
fn expand_self(key: &str, value: &str, previous: &str) -> String {
    let reference = format!("${key}");
    if !value.contains(&reference) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + previous.len());
    let mut rest = value;
    while let Some(at) = rest.find(&reference) {
        let after = &rest[at + reference.len()..];
        let starts_word = at == 0 || rest[..at].ends_with(char::is_whitespace);
        let ends_word = after.is_empty() || after.starts_with(char::is_whitespace);
        out.push_str(&rest[..at]);
        if starts_word && ends_word {
            out.push_str(previous);
        } else {
            out.push_str(&reference);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The directory of a path (`.` for a bare name).
pub(super) fn parent_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(0) => "/".to_owned(),
        Some(at) => path[..at].to_owned(),
        None => ".".to_owned(),
    }
}

/// Joins a directory and a relative path.
pub(super) fn join(dir: &str, path: &str) -> String {
    if dir == "." {
        path.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{path}")
    } else {
        format!("{dir}/{path}")
    }
}

impl RawConfig {
    /// The index of the service with this name, created from the per-service defaults if new.
    fn service_index(&mut self, name: &str, origin: &Origin) -> usize {
        let index = match self.services.iter().position(|s| s.name == name) {
            Some(index) => index,
            None => {
                self.services.push(RawService::new(name));
                self.services.len() - 1
            }
        };
        self.services[index]
            .mentioned
            .get_or_insert_with(|| origin.clone());
        if !self.mention_order.iter().any(|n| n == name) {
            self.mention_order.push(name.to_owned());
        }
        index
    }

    /// Whether the section at PATH, or one it is inside, is a `local` or `remote` filter.
    fn within_connection_filter(&self, path: &[usize]) -> bool {
        let is_filter = |section: &Generic| section.kind == "local" || section.kind == "remote";
        let mut section = &self.sections[path[0]];
        let mut within = is_filter(section);
        for &index in &path[1..] {
            section = match &section.entries[index] {
                GenericEntry::Section(s) => s,
                GenericEntry::Setting(..) => unreachable!("a generic path only names sections"),
            };
            within |= is_filter(section);
        }
        within
    }

    fn generic(&self, path: &[usize]) -> &Generic {
        let mut section = &self.sections[path[0]];
        for &index in &path[1..] {
            section = match &section.entries[index] {
                GenericEntry::Section(s) => s,
                GenericEntry::Setting(..) => unreachable!("a generic path only names sections"),
            };
        }
        section
    }

    fn generic_mut(&mut self, path: &[usize]) -> &mut Generic {
        let mut section = &mut self.sections[path[0]];
        for &index in &path[1..] {
            section = match &mut section.entries[index] {
                GenericEntry::Section(s) => s,
                GenericEntry::Setting(..) => unreachable!("a generic path only names sections"),
            };
        }
        section
    }
}

/// Parses a catalogue text into raw services (used for the built-in defaults).
pub(super) fn parse_catalogue(
    files: &dyn Files,
    text: &str,
) -> Result<Vec<RawService>, ConfigError> {
    let mut parser = Parser::new(files, RawConfig::default());
    parser.parse_text("<catalogue>", text)?;
    let mut config = parser.finish()?;
    for service in &mut config.services {
        service.mentioned = None;
        for value in service.settings.values_mut() {
            value.origin = None;
        }
        for listener in &mut service.listeners {
            listener.origin = None;
            for value in listener.settings.values_mut() {
                value.origin = None;
            }
        }
    }
    Ok(config.services)
}
