//! The `roost` binary: the master (`roost [-F] [-c FILE] [-i NAME]`), the commands that talk
//! to a running master (`stop`, `reload`, `status`, `log reopen`), the configuration commands
//! (`config`, `check`), and the built-in service modes a master re-executes (`inetd`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roost::conf;
use roost::daemon::{self, Options};
use roost_core::wire::control::{Reply, Request, Row};

/// roost: a master process for multi-process network services.
#[derive(Parser, Debug)]
#[command(name = "roost", version, about)]
struct Cli {
    /// Stay in the foreground (do not daemonise); children's stdout is the terminal.
    #[arg(short = 'F', global = true)]
    foreground: bool,
    /// The configuration file (default: /etc/roost/roost.conf if it exists, else the embedded
    /// default).
    #[arg(short = 'c', global = true, value_name = "FILE")]
    config: Option<String>,
    /// Instance name (process titles become roost-NAME/SERVICE).
    #[arg(short = 'i', global = true, value_name = "NAME")]
    instance: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stop the running master (waits until it is gone).
    Stop,
    /// Reload the configuration; prints the error and exits non-zero if it is refused.
    Reload,
    /// Show services, or the processes of the named services (`-p`).
    Status {
        /// List processes instead of services.
        #[arg(short = 'p')]
        processes: bool,
        /// Service names (with -p); none = all.
        services: Vec<String>,
    },
    /// Log commands.
    Log {
        #[command(subcommand)]
        what: LogCommand,
    },
    /// Print the configuration as doveconf does.
    Config {
        /// Only settings that differ from the defaults.
        #[arg(short = 'n', conflicts_with = "all")]
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
    /// Check the configuration; exits non-zero on an error.
    Check,
    /// Built-in service: accept one connection and exec PROGRAM with it on stdin/stdout.
    #[command(hide = true)]
    Inetd {
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        program: Vec<OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Reopen log files (after logrotate).
    Reopen,
}

fn base_dir(config: Option<&str>, instance: Option<&str>) -> Result<String, String> {
    let _ = instance;
    let path = conf::choose(config);
    let cfg = conf::load(path.as_deref()).map_err(|e| e.to_string())?;
    Ok(cfg.settings.global.base_dir.clone())
}

fn talk(cli: &Cli, req: Request) -> Result<Reply, String> {
    let dir = base_dir(cli.config.as_deref(), cli.instance.as_deref())?;
    daemon::control_request(&dir, &req)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("roost: Error: {msg}");
    ExitCode::FAILURE
}

fn simple(cli: &Cli, req: Request) -> ExitCode {
    match talk(cli, req) {
        Ok(Reply::Ok(text)) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok(Reply::Error(text)) => fail(&text),
        Ok(Reply::Table(_)) => fail("unexpected table reply"),
        Err(e) => fail(&e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        None => {
            let code = daemon::run(Options {
                config: cli.config.clone(),
                foreground: cli.foreground,
                instance: cli.instance.clone(),
            });
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Inetd { program }) => {
            ExitCode::from(u8::try_from(roost::child::run_inetd(program)).unwrap_or(89))
        }
        Some(Command::Stop) => {
            let dir = match base_dir(cli.config.as_deref(), cli.instance.as_deref()) {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            let pid = daemon::running_master_pid(&dir);
            match daemon::control_request(&dir, &Request::Stop) {
                Ok(Reply::Ok(_)) => {}
                Ok(Reply::Error(e)) => return fail(&e),
                Ok(Reply::Table(_)) => return fail("unexpected table reply"),
                Err(e) => return fail(&e),
            }
            // Wait for the master to be gone (its shutdown waits for children, at most ~6 s).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if daemon::running_master_pid(&dir).is_none() {
                    return ExitCode::SUCCESS;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            fail(&format!(
                "the master (pid {}) did not stop within 15 seconds",
                pid.unwrap_or(0)
            ))
        }
        Some(Command::Reload) => simple(&cli, Request::Reload),
        Some(Command::Log {
            what: LogCommand::Reopen,
        }) => simple(&cli, Request::LogReopen),
        Some(Command::Status {
            processes,
            services,
        }) => {
            let req = if *processes {
                Request::ProcessStatus {
                    services: services.clone(),
                }
            } else {
                Request::Status
            };
            match talk(&cli, req) {
                Ok(Reply::Table(rows)) => {
                    for row in rows {
                        match row {
                            Row::Service(s) => println!(
                                "{}\tgeneration={}\tprocess_count={}\tprocess_avail={}\tprocess_limit={}\tclient_limit={}\tthrottle_secs={}\tlisten_pending={}\tlistening={}\ttotal_created={}",
                                s.name, s.generation, s.process_count, s.process_avail, s.process_limit,
                                s.client_limit, s.throttle_secs, s.listen_pending, s.listening, s.total_created
                            ),
                            Row::Process(p) => println!(
                                "{}\tpid={}\tavailable_count={}\ttotal_count={}\tidle_start={}\tlast_status_update={}\tlast_kill_sent={}",
                                p.service, p.pid, p.available_count, p.total_count, p.idle_start,
                                p.last_status_update, p.last_kill_sent
                            ),
                            Row::Who(_) => {}
                        }
                    }
                    ExitCode::SUCCESS
                }
                Ok(Reply::Error(e)) => fail(&e),
                Ok(Reply::Ok(_)) => fail("unexpected reply"),
                Err(e) => fail(&e),
            }
        }
        Some(Command::Config {
            non_default,
            all: _,
            show_secrets,
            effective,
        }) => {
            let path = conf::choose(cli.config.as_deref());
            match conf::load(path.as_deref()) {
                Ok(cfg) => {
                    if *effective {
                        let (mc, _) = conf::master_config(&cfg);
                        print!("{}", roost_core::config::print_effective(&mc));
                    } else {
                        print!(
                            "{}",
                            roost_core::config::print(
                                &cfg,
                                roost_core::config::PrintMode {
                                    non_default: *non_default,
                                    show_secrets: *show_secrets,
                                }
                            )
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Some(Command::Check) => {
            let path = conf::choose(cli.config.as_deref());
            match conf::load_checked(path.as_deref()) {
                Ok((_, warnings)) => {
                    for w in warnings {
                        eprintln!("roost: Warning: {w}");
                    }
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("roost: Error: {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
