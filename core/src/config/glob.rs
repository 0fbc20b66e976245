//! Glob patterns of `!include` (reference §6.1): `*`, `?`, `[...]` and `{a,b}` in the last
//! component of the path, matched against a directory listing from the [`Files`] trait, sorted.
//! Earlier components are taken literally.

use super::Files;

/// The files a pattern names, sorted. A pattern without glob characters names itself.
pub(super) fn expand(files: &dyn Files, pattern: &str) -> Result<Vec<String>, String> {
    let (dir, name) = match pattern.rfind('/') {
        Some(at) => (&pattern[..at.max(1)], &pattern[at + 1..]),
        None => (".", pattern),
    };
    if !name.contains(['*', '?', '[', '{']) {
        return Ok(vec![pattern.to_owned()]);
    }
    if dir.contains(['*', '?', '[', '{']) {
        return Err(format!(
            "Wildcards are only supported in the file name: {pattern}"
        ));
    }
    if name.matches('{').count() > MAX_BRACE_GROUPS {
        return Err(format!(
            "Too many {{...}} groups in {pattern} (at most {MAX_BRACE_GROUPS})"
        ));
    }
    let mut alternatives = braces(name);
    alternatives.truncate(MAX_EXPANSIONS);
    let mut entries = files
        .list_dir(dir)
        .map_err(|error| format!("Can't list {dir}: {error}"))?;
    entries.sort();
    let mut found: Vec<String> = entries
        .into_iter()
        .filter(|entry| !entry.starts_with('.'))
        .filter(|entry| {
            alternatives
                .iter()
                .any(|alt| matches(alt.as_bytes(), entry.as_bytes()))
        })
        .map(|entry| {
            if dir == "." {
                entry
            } else {
                format!("{}/{entry}", dir.trim_end_matches('/'))
            }
        })
        .collect();
    found.dedup();
    Ok(found)
}

/// At most this many `{...}` groups in one pattern: expansion grows exponentially (found by the
/// config helper: 24 groups of `{a,b}` took 28 s).
const MAX_BRACE_GROUPS: usize = 8;
/// At most this many patterns after expansion.
const MAX_EXPANSIONS: usize = 1024;

/// Brace expansion: `a{b,c}d` → `abd`, `acd` (nested braces expand too).
fn braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_owned()];
    };
    let mut depth = 0;
    let mut close = None;
    let mut commas = Vec::new();
    for (at, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + at);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(open + at),
            _ => {}
        }
    }
    let Some(close) = close else {
        return vec![pattern.to_owned()];
    };
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut bounds = vec![open];
    bounds.extend(commas);
    bounds.push(close);
    let mut out = Vec::new();
    for pair in bounds.windows(2) {
        let middle = &pattern[pair[0] + 1..pair[1]];
        out.extend(braces(&format!("{head}{middle}{tail}")));
    }
    out
}

/// Matches `*`, `?` and `[...]` (with `!` or `^` negation and ranges).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pattern[p..], name[n]) {
                        if matched {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class; returns (matched, length of the class).
fn class(pattern: &[u8], byte: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let c = pattern[i];
        if c == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let end = pattern[i + 2];
            matched |= (c..=end).contains(&byte);
            i += 3;
        } else {
            matched |= c == byte;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_questions_classes_and_braces() {
        assert!(matches(b"*.conf", b"10-master.conf"));
        assert!(!matches(b"*.conf", b"10-master.conf.ext"));
        assert!(matches(b"1?-*", b"10-auth.conf"));
        assert!(matches(b"[0-9]*.conf", b"90-quota.conf"));
        assert!(!matches(b"[!0-9]*", b"90-quota.conf"));
        assert!(matches(b"*", b""));
        assert_eq!(braces("a{b,c}d"), vec!["abd", "acd"]);
        assert_eq!(braces("x{1,{2,3}}"), vec!["x1", "x2", "x3"]);
        assert_eq!(braces("no{brace"), vec!["no{brace"]);
    }
}
