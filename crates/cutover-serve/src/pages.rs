//! `/_admin`: server-rendered pages (templates escape everything they
//! show), a session cookie after signing in with a token, a CSRF token in
//! every form. An action runs in the background through the app layer, as
//! the CLI command would, and the page shows how it ended; the live feed
//! shows it (and any CLI run) as it goes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cutover_engine::app::{self, Answer, Invocation};
use cutover_engine::EngineError;
use minijinja::context;
use serde::Serialize;

use crate::api::ChangeBody;
use crate::auth::{same, Session, SESSION_TTL};
use crate::Server;

type S = State<Arc<Server>>;
type Fields = Form<HashMap<String, String>>;

pub fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // `.html` templates escape every value they print.
    for (name, text) in [
        ("base.html", include_str!("../templates/base.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("overview.html", include_str!("../templates/overview.html")),
        ("job.html", include_str!("../templates/job.html")),
        ("releases.html", include_str!("../templates/releases.html")),
        (
            "deployments.html",
            include_str!("../templates/deployments.html"),
        ),
        ("audit.html", include_str!("../templates/audit.html")),
        ("notice.html", include_str!("../templates/notice.html")),
    ] {
        if let Err(e) = env.add_template(name, text) {
            // The templates are compiled in; a broken one is a bug found
            // by every test.
            panic!("template {name}: {e}");
        }
    }
    env
}

/// What the UI started, and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct UiAction {
    pub id: u64,
    pub started: String,
    pub actor: String,
    pub job: Option<String>,
    pub command: String,
    /// running | done
    pub state: String,
    pub answer: Option<serde_json::Value>,
}

/// The session cookie's name, with the server's port: cookies are kept
/// per host, and two servers on one host must not sign each other out.
fn session_cookie(s: &Server) -> String {
    format!("cutover_session_{}", s.cookie_port)
}

fn login_cookie(s: &Server) -> String {
    format!("cutover_login_{}", s.cookie_port)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(s: &Server, name: &str, value: &str, path: &str, max_age: u64) -> String {
    let secure = if s.secure_cookie { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

fn to_login() -> Response {
    Redirect::to("/_admin/login").into_response()
}

/// The signed-in session of this request.
fn session(s: &Server, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie(headers, &session_cookie(s))?;
    s.sessions.get(id).map(|sess| (id.to_string(), sess))
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html("<!doctype html><title>Forbidden</title><p>Forbidden: the form's CSRF token is missing or forged. Nothing was changed. Reload the page and try again.</p>"),
    )
        .into_response()
}

/// The session of a form POST whose CSRF token matches it.
fn checked(
    s: &Server,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
) -> Result<Session, Response> {
    let Some((_, sess)) = session(s, headers) else {
        return Err(forbidden());
    };
    let sent = f.get("csrf").map(String::as_str).unwrap_or_default();
    if sent.is_empty() || !same(sent.as_bytes(), sess.csrf.as_bytes()) {
        return Err(forbidden());
    }
    Ok(sess)
}

fn render(
    s: &Server,
    name: &str,
    sess: &Session,
    path: &str,
    notice: Option<String>,
    extra: minijinja::Value,
) -> Response {
    let feed: Vec<String> = s
        .live
        .recent()
        .iter()
        .map(|l| format!("{} {}", l.time, crate::live::line_text(l)))
        .collect();
    let base = context! {
        project => s.ctx().project.config.name.clone(),
        actor => sess.actor.clone(),
        csrf => sess.csrf.clone(),
        path => path,
        notice => notice,
        feed => feed,
    };
    let result = s
        .pages
        .get_template(name)
        .and_then(|t| t.render(minijinja::value::merge_maps([base, extra])));
    match result {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error rendering {name}: {e}; please report it"),
        )
            .into_response(),
    }
}

/// A page that only says something (why a page cannot be shown).
fn notice_page(s: &Server, sess: &Session, path: &str, heading: &str, notice: String) -> Response {
    render(
        s,
        "notice.html",
        sess,
        path,
        Some(notice),
        context! { heading => heading },
    )
}

fn error_notice(e: &EngineError) -> String {
    let mut text = e.to_string();
    if let Some(h) = e.help() {
        text.push_str(&format!(" (help: {h})"));
    }
    text
}

pub async fn to_admin() -> Redirect {
    Redirect::to("/_admin")
}

pub async fn login_form(State(s): S) -> Response {
    login_page(&s, None, StatusCode::OK)
}

fn login_page(s: &Server, error: Option<&str>, status: StatusCode) -> Response {
    let token = crate::auth::random_hex();
    let html = s.pages.get_template("login.html").and_then(|t| {
        t.render(context! {
            project => s.ctx().project.config.name.clone(),
            csrf => token.clone(),
            error => error,
        })
    });
    match html {
        Ok(html) => (
            status,
            [(
                header::SET_COOKIE,
                set_cookie(s, &login_cookie(s), &token, "/_admin/login", 600),
            )],
            Html(html),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn login(
    State(s): S,
    ConnectInfo(crate::Peer(peer)): ConnectInfo<crate::Peer>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    let sent = f.get("csrf").map(String::as_str).unwrap_or_default();
    let want = cookie(&headers, &login_cookie(&s)).unwrap_or_default();
    if sent.is_empty() || !same(sent.as_bytes(), want.as_bytes()) {
        return forbidden();
    }
    if !s.sessions.may_try(peer) {
        return login_page(
            &s,
            Some("Too many failed sign-ins from this address: wait a minute."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let token = f.get("token").map(String::as_str).unwrap_or_default();
    let actor = match &s.tokens {
        None => Some("unauthenticated".to_string()),
        Some(t) => t.name_of(token.trim()),
    };
    let Some(actor) = actor else {
        s.sessions.failed(peer);
        return login_page(
            &s,
            Some("That is not a token of this server."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let (id, _) = s.sessions.start(&actor);
    let mut resp = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/_admin".to_string()),
            (
                header::SET_COOKIE,
                set_cookie(&s, &session_cookie(&s), &id, "/", SESSION_TTL.as_secs()),
            ),
        ],
    )
        .into_response();
    // The sign-in form's CSRF cookie has served.
    if let Ok(v) =
        header::HeaderValue::from_str(&set_cookie(&s, &login_cookie(&s), "", "/_admin/login", 0))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn logout(State(s): S, headers: HeaderMap, Form(f): Fields) -> Response {
    if let Err(r) = checked(&s, &headers, &f) {
        return r;
    }
    if let Some((id, _)) = session(&s, &headers) {
        s.sessions.end(&id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/_admin/login".to_string()),
            (
                header::SET_COOKIE,
                set_cookie(&s, &session_cookie(&s), "", "/", 0),
            ),
        ],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct OverviewQuery {
    live: Option<String>,
}

pub async fn overview(State(s): S, headers: HeaderMap, Query(q): Query<OverviewQuery>) -> Response {
    let Some((_, sess)) = session(&s, &headers) else {
        return to_login();
    };
    let live = q.live.as_deref().is_some_and(|v| v == "1" || v == "true");
    match app::overview(&s.ctx(), live).await {
        Ok(ov) => render(
            &s,
            "overview.html",
            &sess,
            "/_admin",
            None,
            context! { ov => ov },
        ),
        Err(e) => notice_page(
            &s,
            &sess,
            "/_admin",
            "The overview cannot be read",
            error_notice(&e),
        ),
    }
}

pub async fn job(State(s): S, headers: HeaderMap, Path(job): Path<String>) -> Response {
    let Some((_, sess)) = session(&s, &headers) else {
        return to_login();
    };
    let path = format!("/_admin/jobs/{job}");
    match app::overview::job_view(&s.ctx(), &job).await {
        Ok((view, history)) => {
            let actions: Vec<UiAction> = s
                .actions
                .lock()
                .map(|a| {
                    a.iter()
                        .rev()
                        .filter(|x| x.job.as_deref().is_none_or(|j| j == job))
                        .take(20)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            render(
                &s,
                "job.html",
                &sess,
                &path,
                None,
                context! { job => view, history => history, actions => actions },
            )
        }
        Err(e) => (
            StatusCode::NOT_FOUND,
            notice_page(&s, &sess, &path, "No such job", error_notice(&e)),
        )
            .into_response(),
    }
}

/// Runs `work` in the background as the UI's action `command`.
fn start(
    s: &Arc<Server>,
    actor: &str,
    job: Option<String>,
    command: String,
    work: impl std::future::Future<Output = Answer> + Send + 'static,
) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        let Ok(mut a) = s.actions.lock() else {
            return;
        };
        if a.len() >= 200 {
            a.remove(0);
        }
        a.push(UiAction {
            id,
            started: cutover_state::now_rfc3339(),
            actor: actor.to_string(),
            job,
            command,
            state: "running".into(),
            answer: None,
        });
    }
    let s2 = s.clone();
    // Tracked by the server; the page shows how it ended.
    drop(s.run(async move {
        let answer = work.await;
        let done = s2.actions.lock().map(|mut a| {
            if let Some(x) = a.iter_mut().find(|x| x.id == id) {
                x.state = "done".into();
                x.answer = Some(answer.to_json());
            }
        });
        drop(done);
    }));
}

pub async fn change(
    State(s): S,
    headers: HeaderMap,
    Path((job, op)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let sess = match checked(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let body = ChangeBody {
        version: field("version"),
        reason: field("reason"),
        ticket: field("ticket"),
        force: false,
    };
    let (op, opts) = match crate::api::change_options(&job, &op, &sess.actor, body) {
        Ok(x) => x,
        Err(e) => return refused(&s, &sess, &e).await,
    };
    let inv = Invocation {
        actor: sess.actor.clone(),
        command: app::channel_command(op, &opts),
    };
    let ctx = match s.fresh() {
        Ok(c) => c,
        Err(e) => return refused(&s, &sess, &e).await,
    };
    start(
        &s,
        &sess.actor,
        Some(job.clone()),
        inv.command.clone(),
        async move {
            match app::channel(&ctx, &inv, op, &opts).await {
                Ok((_, a)) => a,
                Err(e) => Answer::error(&e),
            }
        },
    );
    Redirect::to(&format!("/_admin/jobs/{}", urlencode(&job))).into_response()
}

pub async fn deploy(State(s): S, headers: HeaderMap, Form(f): Fields) -> Response {
    let sess = match checked(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = app::DeployRequest::default();
    let inv = Invocation {
        actor: sess.actor.clone(),
        command: app::deploy_command(&req),
    };
    let ctx = match s.fresh() {
        Ok(c) => c,
        Err(e) => return refused(&s, &sess, &e).await,
    };
    start(&s, &sess.actor, None, inv.command.clone(), async move {
        match app::deploy(&ctx, &inv, &req).await {
            Ok((_, a)) => a,
            Err(e) => Answer::error(&e),
        }
    });
    Redirect::to("/_admin").into_response()
}

pub async fn refresh(State(s): S, headers: HeaderMap, Form(f): Fields) -> Response {
    let sess = match checked(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let back = f
        .get("back")
        .filter(|b| {
            b.starts_with("/_admin") && !b.contains("//") && b.bytes().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| "/_admin".into());
    match s.refresh() {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => refused(&s, &sess, &e).await,
    }
}

/// A refused action: the overview (of the project as last loaded) with
/// what was refused and why, status 400; nothing was started.
async fn refused(s: &Server, sess: &Session, e: &EngineError) -> Response {
    let notice = format!(
        "Refused, nothing was started: {} The server keeps the project as it last loaded it.",
        error_notice(e)
    );
    let page = match app::overview(&s.ctx(), false).await {
        Ok(ov) => render(
            s,
            "overview.html",
            sess,
            "/_admin",
            Some(notice),
            context! { ov => ov },
        ),
        Err(_) => notice_page(s, sess, "/_admin", "Refused", notice),
    };
    (StatusCode::BAD_REQUEST, page).into_response()
}

pub async fn releases(State(s): S, headers: HeaderMap) -> Response {
    let Some((_, sess)) = session(&s, &headers) else {
        return to_login();
    };
    let r = app::releases(&s.ctx(), None).await;
    render(
        &s,
        "releases.html",
        &sess,
        "/_admin/releases",
        None,
        context! { releases => r },
    )
}

pub async fn deployments(State(s): S, headers: HeaderMap) -> Response {
    let Some((_, sess)) = session(&s, &headers) else {
        return to_login();
    };
    match app::deployments(&s.ctx(), 100).await {
        Ok(d) => render(
            &s,
            "deployments.html",
            &sess,
            "/_admin/deployments",
            None,
            context! { deployments => d },
        ),
        Err(e) => render(
            &s,
            "deployments.html",
            &sess,
            "/_admin/deployments",
            Some(error_notice(&e)),
            context! { deployments => Vec::<String>::new() },
        ),
    }
}

pub async fn audit(State(s): S, headers: HeaderMap) -> Response {
    let Some((_, sess)) = session(&s, &headers) else {
        return to_login();
    };
    let lines = app::audit_lines(&s.ctx(), 1000).await;
    render(
        &s,
        "audit.html",
        &sess,
        "/_admin/audit",
        None,
        context! { lines => lines },
    )
}

pub async fn events(State(s): S, headers: HeaderMap) -> Response {
    let Some((id, _)) = session(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let server = s.clone();
    s.live
        .sse(move || server.sessions.get(&id).is_some())
        .into_response()
}

pub async fn static_file(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "live.js" => (
            include_str!("../static/live.js"),
            "text/javascript; charset=utf-8",
        ),
        "style.css" => (
            include_str!("../static/style.css"),
            "text/css; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// A path segment, percent-encoded.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let env = templates();
        let html = env
            .get_template("audit.html")
            .and_then(|t| {
                t.render(context! {
                    project => "<script>p</script>", actor => "a", csrf => "c", path => "/_admin",
                    feed => vec!["<b>f</b>"], lines => vec!["<script>alert(1)</script>"],
                })
            })
            .expect("render");
        assert!(
            !html.contains("<script>alert")
                && !html.contains("<b>f")
                && !html.contains("<script>p")
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
    }
}
