//! The `cutover` binary: parse, run, map the outcome to an exit code.

fn main() -> std::process::ExitCode {
    cutover_cli::main(std::env::args_os())
}
