//! Printing an error: the one result document under `--json`, else the
//! message and what to do next on stderr. The exit code is the error's own
//! (SPEC section 11, decided in the engine).

use cutover_engine::app::Answer;
use cutover_engine::EngineError;

pub fn print(e: &EngineError, json: bool) {
    if json {
        println!("{}", Answer::error(e).to_json());
        return;
    }
    match e {
        EngineError::Config(d) => {
            eprintln!("{d}");
            eprintln!(
                "error: {} problem(s) found; fix them and run `cutover check`",
                d.0.len()
            );
        }
        _ => {
            eprintln!("error: {e}");
            if let Some(h) = e.help() {
                eprintln!("  help: {h}");
            }
        }
    }
}
