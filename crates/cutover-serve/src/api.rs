//! `/api/...`: the admin UI's data and actions as JSON, for automation,
//! with `Authorization: Bearer`. A mutating endpoint takes what the CLI
//! command takes and answers the CLI's `--json` document, with the HTTP
//! status of its exit code (0 → 200, 2 → 400, 3 → 409, 4 → 422, 1 → 500).
//! Also `/store/...`, the release store.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cutover_engine::app::{self, Answer, Invocation};
use cutover_engine::channel::{ChannelOp, ChannelOptions};
use cutover_engine::EngineError;
use serde::Deserialize;

use crate::auth::{same, sha256};
use crate::Server;

type S = State<Arc<Server>>;

/// The answer as HTTP: its document, with the status of its exit code.
pub fn answer(a: &Answer) -> Response {
    let status = StatusCode::from_u16(a.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(a.to_json())).into_response()
}

pub fn error(e: &EngineError) -> Response {
    answer(&Answer::error(e))
}

fn unauthorized(why: &str) -> Response {
    let a = Answer::new("unauthorized", 2).with("error", why).with(
        "help",
        "send `Authorization: Bearer TOKEN` with an admin token of this server",
    );
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        Json(a.to_json()),
    )
        .into_response()
}

fn too_many() -> Response {
    let a = Answer::new("refused", 2).with(
        "error",
        "too many failed sign-ins from this address; wait a minute",
    );
    (StatusCode::TOO_MANY_REQUESTS, Json(a.to_json())).into_response()
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The name of the admin token the request carries; the audit actor.
fn actor(s: &Server, headers: &HeaderMap, peer: std::net::IpAddr) -> Result<String, Response> {
    let Some(tokens) = &s.tokens else {
        return Ok("unauthenticated".into());
    };
    if !s.sessions.may_try(peer) {
        return Err(too_many());
    }
    let Some(presented) = bearer(headers) else {
        return Err(unauthorized("no token: this endpoint needs an admin token"));
    };
    match tokens.name_of(presented) {
        Some(name) => Ok(name),
        None => {
            s.sessions.failed(peer);
            Err(unauthorized("this server knows no such token"))
        }
    }
}

macro_rules! authed {
    ($s:expr, $headers:expr, $peer:expr) => {
        match actor(&$s, &$headers, $peer) {
            Ok(a) => a,
            Err(r) => return r,
        }
    };
}

#[derive(Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    live: Option<String>,
}

pub async fn overview(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    authed!(s, headers, peer);
    let live = q.live.as_deref().is_some_and(|v| v == "1" || v == "true");
    match app::overview(&s.ctx(), live).await {
        Ok(ov) => answer(&Answer::ok().with("overview", ov)),
        Err(e) => error(&e),
    }
}

pub async fn job(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Response {
    authed!(s, headers, peer);
    let ctx = s.ctx();
    match app::overview::job_view(&ctx, &job).await {
        Ok((view, history)) => answer(&Answer::ok().with("job", view).with("history", history)),
        Err(e) => error(&e),
    }
}

pub async fn deployments(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
) -> Response {
    authed!(s, headers, peer);
    match app::deployments(&s.ctx(), 100).await {
        Ok(d) => answer(&Answer::ok().with("deployments", d)),
        Err(e) => error(&e),
    }
}

pub async fn audit(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
) -> Response {
    authed!(s, headers, peer);
    answer(&Answer::ok().with("lines", app::audit_lines(&s.ctx(), 1000).await))
}

pub async fn releases(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
) -> Response {
    authed!(s, headers, peer);
    answer(&Answer::ok().with("releases", app::releases(&s.ctx(), None).await))
}

pub async fn release(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    Path(ticket): Path<String>,
) -> Response {
    authed!(s, headers, peer);
    match app::releases(&s.ctx(), Some(&ticket)).await.pop() {
        Some(r) => answer(&Answer::ok().with("release", r)),
        None => error(&EngineError::usage(
            format!("no ticket release `{ticket}` has a state file"),
            "see GET /api/releases",
        )),
    }
}

pub async fn events(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
) -> Response {
    authed!(s, headers, peer);
    s.live.sse(|| true).into_response()
}

pub async fn refresh(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
) -> Response {
    authed!(s, headers, peer);
    match s.refresh() {
        Ok(()) => answer(&Answer::new("refreshed", 0)),
        Err(e) => error(&e),
    }
}

/// The flags of `cutover deploy`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    #[serde(default)]
    pub jobs: Option<Vec<String>>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub sync_only: bool,
    #[serde(default)]
    pub verify: bool,
    #[serde(default)]
    pub purge_data: bool,
}

impl DeployBody {
    pub fn request(self) -> app::DeployRequest {
        app::DeployRequest {
            jobs: self
                .jobs
                .map(|j| j.into_iter().filter(|s| !s.is_empty()).collect()),
            dry_run: self.dry_run,
            force: self.force,
            sync_only: self.sync_only,
            verify: self.verify,
            purge_data: self.purge_data,
        }
    }
}

/// A JSON object as the options of a command (an array or a scalar is
/// refused, as is an unknown field).
fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, EngineError> {
    let usage = |why: String| {
        EngineError::usage(
            format!("the request body is not what this endpoint takes: {why}"),
            "send a JSON object with the command's options (see docs/reference.md, `cutover serve`)",
        )
    };
    if !v.is_object() {
        return Err(usage("not a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| usage(e.to_string()))
}

fn bad_body(e: JsonRejection) -> Response {
    error(&EngineError::usage(
        format!(
            "the request body is not what this endpoint takes: {}",
            e.body_text()
        ),
        "send a JSON object with the command's options (see docs/reference.md, `cutover serve`)",
    ))
}

pub async fn deploy(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let actor = authed!(s, headers, peer);
    let body: DeployBody = match body.map(|Json(v)| object(v)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error(&e),
        Err(e) => return bad_body(e),
    };
    let req = body.request();
    let inv = Invocation {
        actor,
        command: app::deploy_command(&req),
    };
    // An action runs with the project as it is on disk, as the CLI would.
    let ctx = match s.fresh() {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let run = s.run(async move {
        match app::deploy(&ctx, &inv, &req).await {
            Ok((_, a)) => a,
            Err(e) => Answer::error(&e),
        }
    });
    finished(run.await)
}

/// What `cutover channel canary|promote|rollback` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    pub version: String,
    pub reason: String,
    #[serde(default)]
    pub ticket: String,
    /// promote: skip the soak (audited).
    #[serde(default)]
    pub force: bool,
}

/// The channel operation a path names, and its options, checked.
pub fn change_options(
    job: &str,
    op: &str,
    actor: &str,
    b: ChangeBody,
) -> Result<(ChannelOp, ChannelOptions), EngineError> {
    let op = match op {
        "canary" => ChannelOp::Canary,
        "promote" => ChannelOp::Promote,
        "rollback" => ChannelOp::Rollback,
        other => {
            return Err(EngineError::usage(
                format!("no channel operation `{other}`"),
                "use canary, promote or rollback",
            ))
        }
    };
    if b.reason.trim().is_empty() {
        return Err(EngineError::usage(
            "a channel change needs a reason",
            "say why: it goes into the audit log",
        ));
    }
    if b.force && op != ChannelOp::Promote {
        return Err(EngineError::usage(
            "force applies to promote only",
            "leave it out",
        ));
    }
    Ok((
        op,
        ChannelOptions {
            job: job.to_string(),
            version: Some(b.version),
            actor: actor.to_string(),
            reason: b.reason,
            ticket: b.ticket,
            keys: Vec::new(),
            force: b.force,
            allow: Default::default(),
            command: String::new(),
        },
    ))
}

pub async fn change(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    Path((job, op)): Path<(String, String)>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let actor = authed!(s, headers, peer);
    let body: ChangeBody = match body.map(|Json(v)| object(v)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error(&e),
        Err(e) => return bad_body(e),
    };
    let (op, opts) = match change_options(&job, &op, &actor, body) {
        Ok(x) => x,
        Err(e) => return error(&e),
    };
    let inv = Invocation {
        actor,
        command: app::channel_command(op, &opts),
    };
    // An action runs with the project as it is on disk, as the CLI would.
    let ctx = match s.fresh() {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let run = s.run(async move {
        match app::channel(&ctx, &inv, op, &opts).await {
            Ok((_, a)) => a,
            Err(e) => Answer::error(&e),
        }
    });
    finished(run.await)
}

/// The answer of a tracked run (a run that panicked is a bug, said so).
fn finished(run: Result<Answer, tokio::task::JoinError>) -> Response {
    match run {
        Ok(a) => answer(&a),
        Err(e) => error(&EngineError::Internal(format!("the run failed: {e}"))),
    }
}

/// A read of the store: anonymous, unless `[serve] store_read_token` is
/// set; then that token or an admin token.
fn may_read(s: &Server, headers: &HeaderMap, peer: std::net::IpAddr) -> Result<(), Response> {
    let Some(want) = s.read_token() else {
        return Ok(());
    };
    // A limited address is refused whatever it sends (as for admin tokens).
    if !s.sessions.may_try(peer) {
        return Err(too_many());
    }
    let presented = bearer(headers).unwrap_or_default();
    if !presented.is_empty()
        && same(
            crate::auth::hex(&sha256(presented.as_bytes())).as_bytes(),
            want.as_bytes(),
        )
    {
        return Ok(());
    }
    if s.tokens.is_none() {
        // No admin tokens to fall back on: the read token is the only key.
        if !presented.is_empty() {
            s.sessions.failed(peer);
        }
        return Err(unauthorized("this store's reads need its read token"));
    }
    actor(s, headers, peer).map(|_| ())
}

fn store_target(uri: &Uri) -> Result<crate::store::Target, Response> {
    let raw = uri.path().strip_prefix("/store/").unwrap_or_default();
    crate::store::target(raw).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            "not a store path: /store/<job>/releases.json or /store/<job>/<version>.<sha256>.tar.zst\n",
        )
            .into_response()
    })
}

/// GET, and HEAD (which axum routes here too): the headers alone.
pub async fn store_get(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    method: axum::http::Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Err(r) = may_read(&s, &headers, peer) {
        return r;
    }
    match store_target(&uri) {
        Ok(t) => s.store.get(&t, method == axum::http::Method::HEAD).await,
        Err(r) => r,
    }
}

pub async fn store_put(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    if s.tokens.is_none() {
        return unauthorized("this server runs without admin tokens, and a store write needs one");
    }
    let who = match actor(&s, &headers, peer) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let t = match store_target(&uri) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let resp = s.store.put(&t, &headers, body).await;
    // Every write is audited on the server, with the token's name.
    let (outcome, rc) = match resp.status().as_u16() {
        200..=299 => ("stored", 0),
        412 => ("conflict", 1),
        400..=499 => ("refused", 2),
        _ => ("failed", 1),
    };
    Invocation {
        actor: who,
        command: format!("PUT /store/{}/{}", t.job, t.file),
    }
    .audit(
        &s.ctx(),
        outcome,
        rc,
        &format!("HTTP {}", resp.status().as_u16()),
    )
    .await;
    resp
}
