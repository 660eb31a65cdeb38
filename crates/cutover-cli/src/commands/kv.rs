//! `cutover kv get|put|list|delete` and `cutover secrets ...`.

use cutover_engine::app::Answer;
use std::io::Read;

use cutover_engine::kv;
use cutover_state::Secret;

use super::{command_line, Session};
use crate::args::{KvCommand, SecretsCommand};
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

pub async fn secrets(s: &Session, c: SecretsCommand) -> Result<u8, EngineError> {
    use cutover_engine::app::admin;
    use cutover_engine::secrets;
    let inv = s.invocation_of(command_line());
    match c {
        SecretsCommand::Identity => {
            let (id, path, created) = secrets::identity(&s.ctx)?;
            if s.json {
                super::print_answer(
                    &Answer::ok()
                        .with("public_key", id.recipient())
                        .with("path", path.display().to_string())
                        .with("created", created),
                );
            } else {
                if created {
                    eprintln!(
                        "created {} (0600): your private key; back it up, it is the only way you read the secrets once you are an operator",
                        path.display()
                    );
                }
                println!("{}", id.recipient());
            }
        }
        SecretsCommand::Operators => {
            let ops = secrets::operators(&s.ctx).await?;
            if s.json {
                super::print_answer(&Answer::ok().with("operators", &ops));
            } else if ops.is_empty() {
                println!(
                    "no operators: the secrets are under {} (add yourself with `cutover secrets add-operator`)",
                    s.ctx.workspace.join("secret.key").display()
                );
            } else {
                let rows: Vec<Vec<String>> = ops
                    .iter()
                    .map(|o| {
                        vec![
                            format!("{}{}", o.name, if o.you { " (you)" } else { "" }),
                            o.public_key.clone(),
                            o.added_by.clone(),
                            o.added_at.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "PUBLIC KEY", "ADDED BY", "ADDED AT"], &rows);
            }
        }
        SecretsCommand::AddOperator { name, pubkey } => {
            let (added, answer) = admin::secrets_add_operator(&s.ctx, &inv, &name, &pubkey).await?;
            if s.json {
                super::print_answer(&answer);
            } else if !added.replaced.is_empty() {
                println!(
                    "{name} added as the only operator: no secret was stored and you were not one of the operators ({}), so they were replaced; add the others again with their public keys",
                    added.replaced.join(", ")
                );
            } else if added.first {
                println!(
                    "{name} added: the secrets ({} re-encrypted) are now under a data key wrapped for each operator",
                    added.reencrypted
                );
            } else {
                println!("{name} added: they can read the secrets with their identity");
            }
        }
        SecretsCommand::RemoveOperator { name } => {
            let (n, answer) = admin::secrets_remove_operator(&s.ctx, &inv, &name).await?;
            if s.json {
                super::print_answer(&answer);
            } else {
                println!(
                    "{name} removed: {n} secrets re-encrypted under a new data key; change the values {name} knew"
                );
            }
        }
        SecretsCommand::RotateKey => {
            let (n, answer) = admin::secrets_rotate_key(&s.ctx, &inv).await?;
            if s.json {
                super::print_answer(&answer);
            } else {
                println!("{n} secrets re-encrypted under a new data key");
            }
        }
    }
    Ok(0)
}
