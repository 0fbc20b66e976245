//! The configuration parser (text and RON) never panics, and what it accepts can be checked,
//! printed and turned into a master configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_core::config::{self, MemoryFiles, NoEnv, PrintMode, System};

struct Nobody;

impl System for Nobody {
    fn user_exists(&self, name: &str) -> bool {
        name == "nobody" || name == "root"
    }
    fn group_exists(&self, name: &str) -> bool {
        name == "nogroup" || name == "root"
    }
    fn fd_limit(&self) -> u64 {
        1024
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first byte picks the syntax, so both parsers get the whole corpus.
    let name = if data.first().is_some_and(|b| b % 4 == 0) { "fuzz.ron" } else { "/etc/roost/roost.conf" };
    let files = MemoryFiles::new([("/etc/roost/conf.d/a.conf", "service imap {\n  process_limit = 5\n}\n")]);
    if let Ok(config) = config::load_str(name, &text, &files, &NoEnv) {
        let _ = config::check(&config, &Nobody);
        let _ = config::print(&config, PrintMode { non_default: true, show_secrets: false });
        let (master, _) = config::master_config(&config.settings, &|_| true);
        let _ = config::print_effective(&master);
        let _ = config::to_ron(&config.settings);
    }
});
