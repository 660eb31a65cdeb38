//! Health checks: http and tcp from the operator host, a command on the
//! worker; every configured check must pass, retried `attempts` times.

use std::time::Duration;

use cutover_model::HealthCheck;
use cutover_transport::{Command, Host};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::remote::LifecycleEnv;

/// Renders a job's checks for one worker and waits until they pass.
///
/// `first_command` is the result of the command check's first attempt when
/// it already ran on the worker (folded into the lifecycle command).
pub(crate) async fn check_allocation(
    host: &Host,
    env: &LifecycleEnv<'_>,
    kv: &std::collections::BTreeMap<String, String>,
    operator_env: &std::collections::BTreeMap<String, String>,
    first_command: Option<Result<(), String>>,
) -> Result<(), String> {
    let spec = &env.job.manifest.health;
    if spec.is_empty() {
        return Ok(());
    }
    let no_secrets = std::collections::BTreeSet::new();
    let fleet = cutover_model::view::FleetView::default();
    let rctx = cutover_model::tree::RenderContext {
        kv,
        secrets: &no_secrets,
        env: operator_env,
        fleet: &fleet,
    };
    let render = |t: &Option<String>| -> Result<Option<String>, String> {
        t.as_deref()
            .map(|t| cutover_model::tree::render_str(t, env.job, env.worker, &rctx))
            .transpose()
    };
    let checks = Checks {
        http: render(&spec.http)?,
        tcp: render(&spec.tcp)?,
        command: spec.command.clone(),
    };
    wait_healthy(host, env, spec, &checks, first_command).await
}

/// The rendered checks of one allocation.
pub(crate) struct Checks {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub command: Option<String>,
}

pub(crate) async fn wait_healthy(
    host: &Host,
    env: &LifecycleEnv<'_>,
    spec: &HealthCheck,
    checks: &Checks,
    mut first_command: Option<Result<(), String>>,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=spec.attempts {
        match once(host, env, spec, checks, first_command.take()).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if attempt < spec.attempts {
            tokio::time::sleep(spec.interval).await;
        }
    }
    Err(format!(
        "unhealthy after {} attempt{}: {last}",
        spec.attempts,
        if spec.attempts == 1 { "" } else { "s" }
    ))
}

async fn once(
    host: &Host,
    env: &LifecycleEnv<'_>,
    spec: &HealthCheck,
    checks: &Checks,
    command_done: Option<Result<(), String>>,
) -> Result<(), String> {
    if let Some(url) = &checks.http {
        http(url, spec.expect_status, spec.timeout).await?;
    }
    if let Some(addr) = &checks.tcp {
        match tokio::time::timeout(spec.timeout, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("tcp {addr}: {e}")),
            Err(_) => return Err(format!("tcp {addr}: timed out")),
        }
    }
    if let Some(done) = command_done {
        return done;
    }
    if let Some(command) = &checks.command {
        let dir = format!("{}/current", env.worker.job_dir(&env.job.name));
        let cmd = env
            .apply(Command::shell(command))
            .cwd(dir)
            .timeout(spec.timeout)
            .label(command.clone())
            .kill_on_timeout();
        let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!(
                "`{command}` exited {}: {}",
                out.code.map_or("by signal".into(), |c| c.to_string()),
                out.tail(3)
            ));
        }
    }
    Ok(())
}

/// A plain HTTP/1.1 GET that reads the status line. Health endpoints are
/// local-network HTTP; a client library would add nothing here.
async fn http(url: &str, expect: u16, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// health checks are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let request = async {
        let mut stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: cutover\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256];
        let mut len = 0;
        while len < buf.len() {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 || buf[..len + n].contains(&b'\n') {
                len += n;
                break;
            }
            len += n;
        }
        let head = String::from_utf8_lossy(&buf[..len]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "no HTTP status line".to_string())?;
        Ok::<u16, String>(status)
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(status)) if status == expect => Ok(()),
        Ok(Ok(status)) => Err(format!("GET {url}: HTTP {status}, expected {expect}")),
        Ok(Err(e)) => Err(format!("GET {url}: HTTP 0 ({e})")),
        Err(_) => Err(format!(
            "GET {url}: timed out after {}s",
            timeout.as_secs_f32()
        )),
    }
}
