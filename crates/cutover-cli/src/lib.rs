//! The `cutover` command line: parses arguments, loads the project once,
//! calls the engine, prints, and decides the exit code.

// Output whose reader went away (`cutover status | head -1`) is dropped,
// not a panic: a deploy in progress must finish and record what it did
// whether or not anyone still reads its progress. These shadow the std
// macros in every module below.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod commands;
mod error;
mod example;
mod msrv;
mod output;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use cutover_engine::interrupt::Interrupt;

use clap::Parser;

/// Runs cutover with these arguments; the exit code follows SPEC section 11.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match args::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // A usage error under --json is one JSON document too.
            if args.iter().skip(1).any(|a| a == "--json") {
                let text = e.render().to_string();
                let e = cutover_engine::EngineError::usage(
                    text.trim().trim_start_matches("error: "),
                    "see `cutover --help` or `cutover <command> --help`",
                );
                error::print(&e, true);
            } else {
                let _ = e.print();
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(0);
        }
    };
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::spawn(listen_for_signals(interrupt()));
        // The command runs until it ends, or until a second signal asks to
        // abort: then it is dropped where it stands, which removes its
        // scratch dirs and frees the lock, and its deployment is recorded.
        let signals = interrupt();
        let outcome = {
            let command = commands::run(cli);
            tokio::pin!(command);
            tokio::select! {
                r = &mut command => Some(r),
                () = signals.aborted() => None,
            }
        };
        let result = match outcome {
            Some(r) => r,
            None => {
                if let Some((store, seq)) = interrupt().take_running() {
                    let _ = store.finish_deployment(seq, "interrupted", "{}").await;
                }
                interrupt().record_abort(interrupt().exit_code().unwrap_or(130));
                eprintln!("cutover: aborted; the next run resumes what was not promoted");
                Ok(interrupt().exit_code().unwrap_or(130))
            }
        };
        // A PostgreSQL lock is let go of by its connection, which is
        // closed here rather than cut when the process ends.
        commands::close_stores().await;
        result
    });
    // Remote steps still running (a second signal) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    let interrupted = interrupt().exit_code();
    match result {
        Ok(code) => ExitCode::from(interrupted.filter(|_| code != 0).unwrap_or(code)),
        Err(e) => {
            error::print(&e, json);
            ExitCode::from(interrupted.unwrap_or(e.exit_code()))
        }
    }
}

/// The signals of this process: one per process, shared by every command.
pub(crate) fn interrupt() -> Arc<Interrupt> {
    static INTERRUPT: OnceLock<Arc<Interrupt>> = OnceLock::new();
    INTERRUPT.get_or_init(Interrupt::new).clone()
}

/// SIGINT and SIGTERM: the first asks the run to start nothing new and
/// finish what is in flight, the second to abort at once.
async fn listen_for_signals(interrupt: Arc<Interrupt>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = int.recv() => cutover_engine::interrupt::SIGINT,
            _ = term.recv() => cutover_engine::interrupt::SIGTERM,
        };
        if interrupt.receive(sig) {
            eprintln!(
                "cutover: interrupted: finishing the steps in flight and starting nothing new \
                 (a second Ctrl-C or SIGTERM stops at once)"
            );
        } else {
            eprintln!("cutover: stopping at once");
        }
    }
}
