//! Tidy: the core stays pure, and the simulator stays deterministic.
//!
//! The core's promise (DESIGN.md, STYLE.md §2) is that nothing in it reads a clock, starts a
//! thread, does IO, draws a random number or iterates a randomly seeded map: time and events are
//! inputs. The simulator's promise is that a seed replays bit for bit. Both are easy to break by
//! accident with one innocent-looking call, so this test reads the sources and names the
//! replacement for each banned call. A line may opt out with a `tidy: allow` comment that says
//! why (for example a benchmark that measures real time).

use std::fs;
use std::path::{Path, PathBuf};

/// A banned pattern, where it is banned, and what to use instead.
struct Rule {
    pattern: &'static str,
    in_core: bool,
    in_sim: bool,
    instead: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        pattern: "Instant::now",
        in_core: true,
        in_sim: true,
        instead: "take `now` as an argument (core) or read turmoil/tokio time (sim)",
    },
    Rule {
        pattern: "SystemTime",
        in_core: true,
        in_sim: true,
        instead: "take `now` as an argument; wall-clock text belongs to the shell",
    },
    Rule {
        pattern: "thread_rng",
        in_core: true,
        in_sim: true,
        instead: "a SmallRng seeded from the run's seed",
    },
    Rule {
        pattern: "rand::rng()",
        in_core: true,
        in_sim: true,
        instead: "a SmallRng seeded from the run's seed",
    },
    Rule {
        pattern: "from_entropy",
        in_core: true,
        in_sim: true,
        instead: "a SmallRng seeded from the run's seed",
    },
    Rule {
        pattern: "HashMap",
        in_core: true,
        in_sim: true,
        instead: "BTreeMap or FxHashMap (iteration order must not depend on a random seed)",
    },
    Rule {
        pattern: "HashSet",
        in_core: true,
        in_sim: true,
        instead: "BTreeSet or FxHashSet (iteration order must not depend on a random seed)",
    },
    Rule {
        pattern: "thread::spawn",
        in_core: true,
        in_sim: true,
        instead: "nothing: the core is single-threaded; the sim runs hosts on one thread",
    },
    Rule {
        pattern: "std::fs",
        in_core: true,
        in_sim: false,
        instead: "the config module's file-access trait, implemented by the shell",
    },
    Rule {
        pattern: "std::net",
        in_core: true,
        in_sim: false,
        instead: "listener settings as data; sockets belong to the shell",
    },
    Rule {
        pattern: "std::process",
        in_core: true,
        in_sim: false,
        instead: "Output::Spawn / Output::Exit; processes belong to the shell",
    },
    Rule {
        pattern: "std::env",
        in_core: true,
        in_sim: false,
        instead: "the config module's environment trait",
    },
    Rule {
        pattern: "std::io::stdout",
        in_core: true,
        in_sim: false,
        instead: "Output::Log",
    },
    Rule {
        pattern: "println!",
        in_core: true,
        in_sim: false,
        instead: "Output::Log (operator) or tracing (developer)",
    },
    Rule {
        pattern: "eprintln!",
        in_core: true,
        in_sim: false,
        instead: "Output::Log (operator) or tracing (developer)",
    },
    Rule {
        pattern: ".unwrap()",
        in_core: true,
        in_sim: false,
        instead: "handle the case, or `expect(\"<the invariant relied on>\")`",
    },
    Rule {
        pattern: "unsafe ",
        in_core: true,
        in_sim: false,
        instead: "nothing: roost-core forbids unsafe code",
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of a file that are production code: everything before the first `#[cfg(test)]`
/// (tests sit at the bottom of a module by convention), minus comments and opted-out lines.
fn production_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| {
            let code = line.trim_start();
            !code.starts_with("//") && !line.contains("tidy: allow")
        })
        .map(|(number, line)| (number + 1, line))
}

fn violations(root: &Path, sim: bool) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for (number, line) in production_lines(&text) {
            // rustc-hash's maps hash with a fixed function, no seed: their order is the same in
            // every run, so they are allowed where std's randomly seeded ones are not.
            let code = line
                .split("//")
                .next()
                .unwrap_or(line)
                .replace("FxHashMap", "")
                .replace("FxHashSet", "");
            for rule in RULES {
                let applies = if sim { rule.in_sim } else { rule.in_core };
                if applies && code.contains(rule.pattern) {
                    found.push(format!(
                        "{}:{number}: `{}` is banned here; use {}",
                        file.display(),
                        rule.pattern,
                        rule.instead
                    ));
                }
            }
            if sim && code.contains("select!") && !text.contains("biased;") {
                found.push(format!(
                    "{}:{number}: a `select!` without `biased;` breaks replay by seed",
                    file.display()
                ));
            }
        }
    }
    found
}

#[test]
fn core_is_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&root, false);
    assert!(
        found.is_empty(),
        "the core must stay pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn sim_is_deterministic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/src");
    assert!(root.is_dir(), "sim/src not found at {}", root.display());
    let found = violations(&root, true);
    assert!(
        found.is_empty(),
        "the simulator must replay by seed:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_tidy_check_itself_catches_a_banned_call() {
    // A tidy test that cannot fail proves nothing: feed it a line it must reject.
    let dir = std::env::temp_dir().join(format!("roost-tidy-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir is writable");
    fs::write(dir.join("bad.rs"), "fn f() { let t = std::time::Instant::now(); }\nfn g() { let m = rustc_hash::FxHashMap::<u8, u8>::default(); }\n#[cfg(test)]\nmod tests { fn ok() { let m = std::collections::HashMap::<u8, u8>::new(); } }\n")
        .expect("temp file is writable");
    let found = violations(&dir, false);
    fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("Instant::now"), "{found:?}");
}
