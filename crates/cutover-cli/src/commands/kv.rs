//! `cutover kv get|put|list|delete`.

use cutover_engine::app::Answer;
use std::io::Read;

use cutover_engine::kv;
use cutover_state::Secret;

use super::{command_line, Session};
use crate::args::KvCommand;
use crate::output::table;
use cutover_engine::EngineError;

pub async fn run(s: &Session, c: KvCommand) -> Result<u8, EngineError> {
    match c {
        KvCommand::Get { job, key, reveal } => {
            let v = kv::get(&s.ctx, &job, &key, reveal).await?;
            if s.json {
                super::print_answer(&Answer::ok().with("entry", &v));
            } else {
                match v.value {
                    Some(value) => println!("{value}"),
                    None => println!("<secret> (pass --reveal to print it)"),
                }
            }
        }
        KvCommand::Put {
            job,
            key,
            value,
            secret,
        } => {
            let value = if value == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf).map_err(|e| {
                    EngineError::usage(
                        format!("cannot read the value from standard input: {e}"),
                        "pipe the value in, or give it as an argument",
                    )
                })?;
                buf.trim_end_matches('\n').to_string()
            } else {
                value
            };
            // The audit line names the key, never the value.
            let inv = s.invocation_of(format!(
                "cutover kv put {job} {key}{}",
                if secret { " --secret" } else { "" }
            ));
            let answer = cutover_engine::app::admin::kv_put(
                &s.ctx,
                &inv,
                &job,
                &key,
                Secret::new(value),
                secret,
            )
            .await?;
            if s.json {
                super::print_answer(&answer);
            } else {
                println!(
                    "{job}/{key} set{}",
                    if secret {
                        " (secret, encrypted at rest)"
                    } else {
                        ""
                    }
                );
            }
        }
        KvCommand::List { job, reveal } => {
            let list = kv::list(&s.ctx, job.as_deref(), reveal).await?;
            if s.json {
                super::print_answer(&Answer::ok().with("entries", &list));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|k| {
                        vec![
                            k.job.clone(),
                            k.key.clone(),
                            k.value.clone().unwrap_or_else(|| "<secret>".into()),
                        ]
                    })
                    .collect();
                table(&["JOB", "KEY", "VALUE"], &rows);
            }
        }
        KvCommand::Delete { job, key } => {
            let inv = s.invocation_of(command_line());
            let answer = cutover_engine::app::admin::kv_delete(&s.ctx, &inv, &job, &key).await?;
            if s.json {
                super::print_answer(&answer);
            } else {
                println!("{job}/{key} deleted");
            }
        }
    }
    Ok(0)
}
