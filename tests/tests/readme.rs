//! The repository keeps its promises to a newcomer: the README has exactly two set-up commands,
//! one that runs roost on its embedded default and one that runs every test, and CI runs that
//! same test command and nothing weaker.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The shell commands of the README's "Set up" section.
fn setup_commands() -> Vec<String> {
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Set up"))
        .expect("README has a Set up section");
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            commands.push(line.trim().to_owned());
        }
    }
    commands
}

#[test]
fn the_readme_has_exactly_the_two_set_up_commands() {
    assert_eq!(
        setup_commands(),
        vec![
            "cargo run --release --bin roost -- -F".to_owned(),
            "cargo test --workspace".to_owned()
        ]
    );
}

#[test]
fn ci_runs_the_readmes_test_command() {
    let ci = read(".ci/run");
    let test_command = &setup_commands()[1];
    assert!(
        ci.lines().any(|line| {
            let line = line.trim();
            line == test_command || line.starts_with(&format!("{test_command} 2>&1 |"))
        }),
        ".ci/run must run `{test_command}` as it stands in the README"
    );
}

#[test]
fn the_embedded_default_serves_what_the_readme_says() {
    let readme = read("README.md");
    let default = read("shell/src/default.conf");
    assert!(readme.contains("curl pop3://demo:demo@127.0.0.1:1110/1"));
    assert!(readme.contains("pop3s://demo:demo@127.0.0.1:1995/"));
    for port in ["port = 1110", "port = 1995"] {
        assert!(default.contains(port), "{port}: {default}");
    }
    assert!(default.contains("address = 127.0.0.1"), "{default}");
    assert!(
        default.contains("args = home=$demo_dir/mail/%u"),
        "{default}"
    );
}
