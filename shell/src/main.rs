//! `roost`: the master process, its control commands, and the configuration tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roost::daemon::{self, Daemon, PidFile};
use roost::logging::LogWriter;
use roost_core::config::{self, PrintMode};
use roost_core::notice::Level;
use roost_core::wire::control::{self as wire_control, Reply, ReplyDecoder, Request, Row};

/// A master process for multi-process network services.
#[derive(Parser, Debug)]
#[command(name = "roost", version, about, long_about = None)]
struct Cli {
    /// Stay in the foreground (children's stdout is the terminal).
    #[arg(short = 'F', long = "foreground")]
    foreground: bool,
    /// The configuration file (default: /etc/roost/roost.conf, else the embedded default).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<String>,
    /// The instance name: process titles become `roost-NAME/SERVICE` and log lines
    /// `roost-NAME: ...` (overrides `instance_name`).
    #[arg(short = 'i', long = "instance", global = true, value_name = "NAME")]
    instance: Option<String>,
    /// Run a built-in service (used by the master when it starts a child).
    #[arg(long = "builtin", hide = true, num_args = 1.., allow_hyphen_values = true)]
    builtin: Option<Vec<String>>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Stop the running master (clean shutdown) and wait until it is gone.
    Stop,
    /// Reload the configuration; prints the error and exits non-zero if it is refused.
    Reload,
    /// Operations on the log.
    Log {
        #[command(subcommand)]
        what: LogCmd,
    },
    /// Show services and processes of the running master.
    Status,
    /// List the logged-in users: connections, pids and client addresses (anvil's table).
    Who,
    /// Print the configuration as doveconf does.
    Config {
        /// Only settings that differ from the defaults.
        #[arg(short = 'n')]
        non_default: bool,
        /// Every setting (the default).
        #[arg(short = 'a')]
        all: bool,
        /// Show secrets.
        #[arg(short = 'P')]
        show_secrets: bool,
        /// Print the effective values the master uses.
        #[arg(short = 'e')]
        effective: bool,
    },
    /// Check the configuration: exit non-zero on an error.
    Check,
    /// Plan capacity: replay a load profile against the configuration in simulated time.
    Sim {
        /// The load profile (RON; see sim/loads/example.ron).
        #[arg(long)]
        load: String,
        /// Write the timeline (processes, free slots, connections) as an SVG chart here.
        #[arg(long)]
        plot: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// Reopen the log files (after logrotate).
    Reopen,
    /// Show the last warnings and errors of the services (kept by the log process).
    Errors,
}

fn main() -> ExitCode {
    // A built-in is started once per connection in the high-security mode: it skips building
    // the whole command line parser (a measurable part of its start-up).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--builtin") {
        return builtin(&args[2..]);
    }
    let cli = Cli::parse();
    if let Some(args) = &cli.builtin {
        return builtin(args);
    }
    let mut source = roost::config_source(cli.config.as_deref());
    if let Some(name) = &cli.instance {
        source = daemon::Source::Instance {
            inner: Box::new(source),
            name: name.clone(),
        };
    }
    match cli.command {
        None => run(source, cli.foreground),
        Some(Cmd::Config {
            non_default,
            all: _,
            show_secrets,
            effective,
        }) => {
            let config = match source.load() {
                Ok(config) => config,
                Err(error) => return fail(&error.to_string()),
            };
            if effective {
                // The effective values are those a master would run with: none runs a
                // configuration that fails its checks.
                if let Err(errors) = daemon::check(&config) {
                    return refused(&config, &errors);
                }
                let (master, left_out) = daemon::derive(&config.settings);
                for line in left_out_lines(&config.raw, &left_out, true) {
                    println!("# {line}");
                }
                print!("{}", config::print_effective(&master));
            } else {
                print!(
                    "{}",
                    config::print(
                        &config,
                        PrintMode {
                            non_default,
                            show_secrets
                        }
                    )
                );
            }
            ExitCode::SUCCESS
        }
        Some(Cmd::Sim { load, plot }) => simulate(&source, &load, plot.as_deref()),
        Some(Cmd::Check) => {
            let config = match source.load() {
                Ok(config) => config,
                Err(error) => return fail(&error.to_string()),
            };
            match daemon::check(&config) {
                Ok(warnings) => {
                    for warning in warnings {
                        eprintln!("roost: Warning: {warning}");
                    }
                    let (_, left_out) = daemon::derive(&config.settings);
                    for line in left_out_lines(&config.raw, &left_out, true) {
                        eprintln!("roost: Info: {line}");
                    }
                    println!("{}: OK", source.describe());
                    ExitCode::SUCCESS
                }
                Err(errors) => refused(&config, &errors),
            }
        }
        Some(Cmd::Who) => who(&source),
        Some(Cmd::Log {
            what: LogCmd::Errors,
        }) => log_errors(&source),
        Some(command) => {
            let command = match command {
                Cmd::Stop => Request::Stop,
                Cmd::Reload => Request::Reload,
                Cmd::Log {
                    what: LogCmd::Reopen,
                } => Request::LogReopen,
                _ => Request::Status,
            };
            control_command(&source, command)
        }
    }
}

/// `roost log errors`: asks the log process (its log-errors listener) for the last warnings
/// and errors, as `doveadm log errors` does.
fn log_errors(source: &daemon::Source) -> ExitCode {
    use std::io::Read;
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => return fail(&error.to_string()),
    };
    let Some(socket) = daemon::service_socket(&config.settings, "log", "log-errors") else {
        return fail("the log service has no log-errors unix_listener");
    };
    let mut stream = match connect(&socket, "is roost running?") {
        Ok(stream) => stream,
        Err(code) => return code,
    };
    let mut text = String::new();
    if let Err(e) = stream.read_to_string(&mut text) {
        return fail(&format!("read({socket}) failed: {e}"));
    }
    for line in text.lines() {
        if let Some(error) = roost::logging::RecentError::decode(line) {
            println!(
                "{} {}: {}",
                roost::logging::format_time("%b %d %H:%M:%S", error.unix_secs as i64),
                error.service,
                error.text
            );
        }
    }
    ExitCode::SUCCESS
}

/// Connects to one of a running roost's sockets, with a 10 s read timeout; on failure says
/// why, with `hint`, and gives the exit code.
fn connect(socket: &str, hint: &str) -> Result<std::os::unix::net::UnixStream, ExitCode> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            Ok(stream)
        }
        Err(e) => Err(fail(&format!("connect({socket}) failed: {e} ({hint})"))),
    }
}

/// `roost who`: asks anvil (base_dir/anvil) for its table, as `doveadm who` does.
fn who(source: &daemon::Source) -> ExitCode {
    use std::io::{BufRead, Write};
    let base_dir = match base_dir_of(source) {
        Ok(dir) => dir,
        Err(error) => return fail(&error),
    };
    let socket = format!("{base_dir}/anvil");
    let mut stream = match connect(&socket, "is roost running a mail protocol?") {
        Ok(stream) => stream,
        Err(code) => return code,
    };
    if let Err(e) = stream.write_all(b"WHO\n") {
        return fail(&format!("write({socket}) failed: {e}"));
    }
    println!("{:<24} {:>3} {:<20} (ips)", "username", "#", "(pids)");
    for line in std::io::BufReader::new(stream).lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => return fail(&format!("read({socket}) failed: {e}")),
        };
        if line.is_empty() {
            return ExitCode::SUCCESS;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if let [user, count, pids, ips] = fields[..] {
            let pids = format!("({})", pids.replace(',', " "));
            println!(
                "{user:<24} {count:>3} {pids:<20} ({})",
                ips.replace(',', " ")
            );
        }
    }
    fail(&format!(
        "{socket}: anvil closed the connection before the end of the list"
    ))
}

/// The exit status of a master that cannot open its log (the original's FATAL_LOGOPEN).
const EXIT_LOG_OPEN: u8 = 80;

fn fail(text: &str) -> ExitCode {
    eprintln!("roost: Error: {text}");
    ExitCode::from(89)
}

fn builtin(args: &[String]) -> ExitCode {
    let code = match args.split_first() {
        // The master's spawner, not a service (shell/src/spawner.rs).
        Some((name, _)) if name == "spawner" => roost::spawner::main(),
        Some((name, rest)) => roost::builtin::run(name, rest),
        None => {
            eprintln!("Fatal: --builtin needs a name");
            89
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn base_dir_of(source: &daemon::Source) -> Result<String, String> {
    source
        .load()
        .map(|c| c.settings.global.base_dir.clone())
        .map_err(|e| e.to_string())
}

/// Sends one request over the control socket and decodes the reply (core's wire codec).
fn ask(socket: &str, request: &Request) -> Result<Reply, String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect({socket}) failed: {e} (is roost running?)"))?;
    // A reload reads and checks the whole configuration: give it time.
    let wait = std::time::Duration::from_secs(if *request == Request::Reload { 60 } else { 10 });
    let _ = stream.set_read_timeout(Some(wait));
    let mut bytes = wire_control::HANDSHAKE.to_vec();
    request.encode(&mut bytes);
    stream
        .write_all(&bytes)
        .map_err(|e| format!("write({socket}) failed: {e}"))?;
    let mut decoder = ReplyDecoder::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(reply) = decoder.next_reply() {
            return reply.map_err(|e| format!("{socket}: {e}"));
        }
        let n = stream.read(&mut chunk).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "the master did not answer on {socket} within {} s (is it stopped, or stuck?)",
                wait.as_secs()
            ),
            _ => format!("read({socket}) failed: {e}"),
        })?;
        if n == 0 {
            return Err(format!(
                "{socket}: the master closed the connection without a reply"
            ));
        }
        decoder.feed(&chunk[..n]);
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "y"
    } else {
        "n"
    }
}

/// Prints a STATUS or PROCESS-STATUS table as tab-separated lines under a header.
fn print_table(rows: &[Row]) {
    for row in rows {
        match row {
            Row::Service(s) => println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.name,
                s.generation,
                s.process_count,
                s.process_avail,
                s.process_limit,
                s.client_limit,
                s.throttle_secs,
                yes_no(s.listen_pending),
                yes_no(s.listening),
                s.total_created
            ),
            Row::Process(p) => println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                p.service,
                p.pid,
                p.available_count,
                p.total_count,
                p.idle_start,
                p.last_status_update,
                p.last_kill_sent
            ),
        }
    }
}

fn control_command(source: &daemon::Source, request: Request) -> ExitCode {
    let base_dir = match base_dir_of(source) {
        Ok(dir) => dir,
        Err(error) => return fail(&error),
    };
    let socket = format!("{base_dir}/control");
    let pid = PidFile::running(&base_dir);
    if request == Request::Status {
        // Services, then their processes: two requests, one connection each.
        let services = match ask(&socket, &Request::Status) {
            Ok(Reply::Table(rows)) => rows,
            Ok(Reply::Error(error)) => return fail(&error),
            Ok(Reply::Ok(text)) => return fail(&format!("unexpected reply: {text}")),
            Err(error) => return fail(&error),
        };
        let processes = match ask(&socket, &Request::ProcessStatus { services: vec![] }) {
            Ok(Reply::Table(rows)) => rows,
            Ok(Reply::Error(error)) => return fail(&error),
            Ok(Reply::Ok(text)) => return fail(&format!("unexpected reply: {text}")),
            Err(error) => return fail(&error),
        };
        println!("service\tgeneration\tprocess_count\tprocess_avail\tprocess_limit\tclient_limit\tthrottle_secs\tlisten_pending\tlistening\ttotal_created");
        print_table(&services);
        println!();
        println!("service\tpid\tavailable_count\ttotal_count\tidle_start\tlast_status_update\tlast_kill_sent");
        print_table(&processes);
        return ExitCode::SUCCESS;
    }
    match ask(&socket, &request) {
        Ok(Reply::Ok(text)) => {
            if let (Request::Stop, Some(pid)) = (&request, pid) {
                // As `doveadm stop`: wait until the master is gone, that is until the lock on
                // its pid file is released (a zombie still answers kill(pid, 0)).
                let gone = (0..300).any(|_| {
                    let gone = PidFile::running(&base_dir).is_none();
                    if !gone {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    gone
                });
                if !gone {
                    return fail(&format!(
                        "the master (pid {pid}) is still running after 30 s"
                    ));
                }
            }
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok(Reply::Error(error)) => fail(&error),
        Ok(Reply::Table(rows)) => {
            print_table(&rows);
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

/// A configuration that fails its checks: what the parser warned about (an obsolete setting may
/// be the reason), then the errors, as doveconf says them; exit 89.
fn refused(config: &config::Config, errors: &[String]) -> ExitCode {
    for warning in &config.raw.warnings {
        eprintln!("roost: Warning: {warning}");
    }
    for error in errors {
        eprintln!("roost: Error: {error}");
    }
    ExitCode::from(89)
}

fn run(source: daemon::Source, foreground: bool) -> ExitCode {
    if source.is_embedded() {
        if let Err(error) = roost::demo::ensure(&roost::demo::demo_dir()) {
            return fail(&error);
        }
    }
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => return fail(&error.to_string()),
    };
    let warnings = match daemon::check(&config) {
        Ok(warnings) => warnings,
        Err(errors) => return refused(&config, &errors),
    };
    // The configuration as written (with the catalogue's every default service) is only
    // needed to say which services are left out; the master keeps the typed settings alone.
    let config::Config { raw, settings, .. } = config;
    let (master_config, left_out) = daemon::derive(&settings);
    let left_out = left_out_lines(&raw, &left_out, false);
    drop(raw);
    roost::system::release_free_memory();
    let global = &settings.global;
    if let Err(error) = std::fs::create_dir_all(&global.base_dir) {
        return fail(&format!(
            "Can't create base_dir {}: {error}",
            global.base_dir
        ));
    }
    let _ = std::fs::set_permissions(
        &global.base_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let mut pid_file = match PidFile::lock(&global.base_dir) {
        Ok(pid_file) => pid_file,
        Err(error) => return fail(&error),
    };
    // In the background, the parent waits until the master has started, and exits with its
    // status if it did not.
    let started = if foreground {
        None
    } else {
        match roost::system::daemonize() {
            Ok(started) => Some(started),
            Err(error) => return fail(&format!("Can't go to the background: {error}")),
        }
    };
    if let Err(error) = std::env::set_current_dir(&global.base_dir) {
        return fail(&format!("chdir({}) failed: {error}", global.base_dir));
    }
    if let Err(error) = pid_file.write_pid() {
        return fail(&format!("Can't write the pid file: {error}"));
    }
    let mut log = LogWriter::for_settings(global);
    if let Some(error) = log.unwritable() {
        eprintln!("roost: Fatal: {error}");
        return ExitCode::from(EXIT_LOG_OPEN);
    }
    // Until it has started, the master's errors reach whoever started it too (reference §4.1
    // step 5).
    if let Ok(stderr) = roost::system::stderr_copy() {
        log.echo_errors_to(stderr);
    }
    log.master(
        Level::Info,
        &format!(
            "roost v{} starting up with {} (pid {})",
            env!("CARGO_PKG_VERSION"),
            source.describe(),
            std::process::id()
        ),
    );
    for warning in warnings {
        log.master(Level::Warning, &warning.to_string());
    }
    for line in left_out {
        log.master(Level::Info, &line);
    }
    let logs_to_stderr = log.is_stderr();
    let mut daemon = match Daemon::new(settings, master_config, source, log, foreground) {
        Ok(daemon) => daemon,
        Err(error) => return fail(&format!("Can't start: {error}")),
    };
    if let Some(started) = started {
        // A daemon does not hold the terminal, ssh session or pipe that started it, and its
        // children do not inherit it, unless its log goes there.
        if !logs_to_stderr {
            let _ = roost::system::detach_stderr();
        }
        daemon.report_start_to(started);
    }
    let code = daemon.run();
    pid_file.remove();
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// What is said of the services left out: one line for each the configuration names and, when
/// WITH_DEFAULTS (check and `config -e`, which show the whole picture), one for all the
/// catalogue's defaults it never mentions (a stock tree has 16 of them; at every start they
/// would only be noise).
fn left_out_lines(
    raw: &config::RawConfig,
    left_out: &[config::LeftOut],
    with_defaults: bool,
) -> Vec<String> {
    let named = |left: &config::LeftOut| {
        raw.services
            .iter()
            .any(|s| s.name == left.service && s.mentioned.is_some())
    };
    let mut lines: Vec<String> = left_out
        .iter()
        .filter(|l| named(l))
        .map(ToString::to_string)
        .collect();
    let unnamed: Vec<&str> = left_out
        .iter()
        .filter(|l| !named(l))
        .map(|l| l.service.as_str())
        .collect();
    if with_defaults && !unnamed.is_empty() {
        lines.push(format!(
            "{} default services have no program yet and are left out: {}",
            unnamed.len(),
            unnamed.join(", ")
        ));
    }
    lines
}

/// `roost sim`: the configuration's effective services under a load profile, in simulated
/// time, with the same core the daemon runs.
fn simulate(source: &daemon::Source, load: &str, plot: Option<&str>) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => return fail(&error.to_string()),
    };
    let text = match std::fs::read_to_string(load) {
        Ok(text) => text,
        Err(error) => return fail(&format!("Can't read {load}: {error}")),
    };
    let mut profile: sim::load::LoadProfile = match ron::from_str(&text) {
        Ok(profile) => profile,
        Err(error) => {
            return fail(&format!(
                "{load}:{}:{}: {}",
                error.span.start.line, error.span.start.col, error.code
            ))
        }
    };
    let (master_config, left_out) = daemon::derive(&config.settings);
    for line in left_out_lines(&config.raw, &left_out, false) {
        eprintln!("roost: Info: {line}");
    }
    let problems = profile.problems(&master_config);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("roost: Error: {load}: {problem}");
        }
        return ExitCode::from(89);
    }
    // The daemon's accept queues, not the original's process_limit × client_limit.
    if profile.backlog.is_none() {
        profile.backlog = u32::try_from(roost::listen::backlog()).ok();
    }
    let report = sim::plan::run(master_config, profile);
    print!("{report}");
    if report.violation.is_some() {
        // A broken rule of the master: the figures above stop where it broke.
        return ExitCode::from(70);
    }
    if let Some(path) = plot {
        if let Err(error) = std::fs::write(path, sim::plot::timeline_svg(&report)) {
            return fail(&format!("Can't write {path}: {error}"));
        }
        println!("timeline written to {path}");
    }
    ExitCode::SUCCESS
}
