//! `cutover serve`: the admin UI at `/_admin`, the JSON API at `/api` and
//! the release store at `/store`, over the application layer
//! ([`cutover_engine::app`]). The server parses requests and renders; what
//! an action does, what it records and what it answers are the app
//! layer's, the same as the CLI's.
//!
//! Secure by default: it does not start without an admin token (unless
//! told, and never in production), nor serve plain HTTP off loopback
//! (unless told). Sessions are HttpOnly, SameSite=Strict cookies; every
//! form carries a CSRF token; every page is escaped by its template and
//! served with a Content-Security-Policy that allows no inline script.

// A handler's early answer is a `Response` (as axum's own extractors
// reject): boxing it would only add an allocation per refusal.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod guard;
mod live;
mod pages;
mod store;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use cutover_engine::app::{self, env, Environment};
use cutover_engine::interrupt::Interrupt;
use cutover_engine::{Context, EngineError, Quiet};
use tower_http::set_header::SetResponseHeaderLayer;

/// What `cutover serve` was asked.
pub struct ServeOptions {
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: bool,
    pub env: Environment,
    pub interrupt: Arc<Interrupt>,
}

/// The server's state, shared by every request.
pub(crate) struct Server {
    /// The project as last loaded; the refresh button loads it again.
    ctx: RwLock<Arc<Context>>,
    /// `None`: CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1 (loopback only).
    tokens: Option<auth::Tokens>,
    sessions: auth::Sessions,
    /// Cookies are `Secure` under TLS or off loopback.
    secure_cookie: bool,
    /// Cookie names carry the port: two servers on one host keep apart.
    cookie_port: u16,
    store: store::StoreDir,
    live: Arc<live::Live>,
    pages: minijinja::Environment<'static>,
    /// What the UI started, newest last (the page shows how each ended).
    actions: Mutex<Vec<pages::UiAction>>,
    /// Every run the UI or the API started: they finish their steps
    /// whatever happens to the request (a client that went away, a
    /// signal), and the server waits for them before it exits.
    runs: tokio_util::task::TaskTracker,
}

impl Server {
    pub(crate) fn ctx(&self) -> Arc<Context> {
        match self.ctx.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the project again (manifests, workers, config), keeping the
    /// one in use when the new one does not load.
    pub(crate) fn refresh(&self) -> Result<(), EngineError> {
        self.fresh().map(drop)
    }

    /// The project as it is on disk now: what an action runs with, as the
    /// CLI would (the pages show what was last loaded until Refresh).
    pub(crate) fn fresh(&self) -> Result<Arc<Context>, EngineError> {
        let fresh = Arc::new(self.ctx().reload()?);
        match self.ctx.write() {
            Ok(mut c) => *c = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }

    /// Runs `work` (a deploy, a channel change) as a tracked task.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.runs.spawn(work)
    }

    /// The sha256 of `[serve] store_read_token`, as configured now.
    pub(crate) fn read_token(&self) -> Option<String> {
        self.ctx().project.config.store_read_token.clone()
    }
}

/// The client's address, for the sign-in rate limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub std::net::IpAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, guard::Capped>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, guard::Capped>) -> Peer {
        Peer(s.remote_addr().ip())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Peer {
        Peer(s.remote_addr().ip())
    }
}

/// Whether the admin token(s) the environment names would let `cutover
/// serve` start (for `cutover doctor`).
pub fn check_tokens(env: &Environment) -> Result<(), EngineError> {
    auth::Tokens::from_env(env).map(drop)
}

/// The address is one of this machine's own (127.0.0.0/8, ::1).
fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Checks what would make the server unsafe, then serves until a signal.
/// `ready` gets the URL of the admin UI once the socket listens.
pub async fn serve(o: ServeOptions, ready: impl FnOnce(&str)) -> Result<(), EngineError> {
    let tls = match (&o.tls_cert, &o.tls_key) {
        (Some(c), Some(k)) => Some(tls::config(c, k)?),
        (None, None) => None,
        _ => {
            return Err(EngineError::usage(
                "--tls-cert and --tls-key go together",
                "give both (PEM files: the certificate chain and its private key)",
            ))
        }
    };
    if tls.is_none() && !loopback(&o.listen) && !o.insecure_http {
        return Err(EngineError::usage(
            format!(
                "refusing plain HTTP on {}: it is not a loopback address, and tokens and sessions would cross the network in the clear",
                o.listen
            ),
            "give --tls-cert and --tls-key, or --insecure-http when a TLS proxy on this machine fronts it",
        ));
    }
    let tokens = auth::Tokens::from_env(&o.env)?;
    if tokens.is_none() {
        if !o.env.flag(env::CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN) {
            return Err(EngineError::usage(
                "no admin token: cutover serve does not start without one",
                "set CUTOVER_ADMIN_TOKEN (or CUTOVER_ADMIN_TOKEN_FILE, or CUTOVER_ADMIN_TOKENS_FILE with `name:sha256` lines)",
            ));
        }
        if o.env.production() {
            return Err(EngineError::usage(
                "CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1 is refused with CUTOVER_ENV=production",
                "set CUTOVER_ADMIN_TOKEN (or _FILE, or CUTOVER_ADMIN_TOKENS_FILE)",
            ));
        }
        if !loopback(&o.listen) {
            return Err(EngineError::usage(
                format!(
                    "CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1 serves loopback only, not {}",
                    o.listen
                ),
                "listen on 127.0.0.1, or set an admin token",
            ));
        }
    }
    let ctx = app::open(&o.root, &o.env, Arc::new(Quiet), o.interrupt.clone()).await?;
    let store_dir = store_dir(&ctx);
    std::fs::create_dir_all(&store_dir).map_err(EngineError::io(format!(
        "creating the served store {}",
        store_dir.display()
    )))?;
    let tcp = tokio::net::TcpListener::bind(o.listen).await.map_err(|e| {
        EngineError::usage(
            format!("cannot listen on {}: {e}", o.listen),
            "pick a free address with --listen ADDR:PORT",
        )
    })?;
    let local = tcp
        .local_addr()
        .map_err(EngineError::io("reading the listening address"))?;
    let live = live::Live::start(ctx.workspace.clone());
    let server = Arc::new(Server {
        ctx: RwLock::new(Arc::new(ctx)),
        tokens,
        sessions: auth::Sessions::default(),
        secure_cookie: tls.is_some() || !loopback(&o.listen),
        cookie_port: local.port(),
        store: store::StoreDir::new(store_dir, o.interrupt.clone()),
        live,
        pages: pages::templates(),
        actions: Mutex::new(Vec::new()),
        runs: tokio_util::task::TaskTracker::new(),
    });
    let app = router(server.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    ready(&format!("{scheme}://{local}/_admin"));
    let make = app.into_make_service_with_connect_info::<Peer>();
    let stop = {
        let i = o.interrupt.clone();
        async move { i.signalled().await }
    };
    // Open event streams never end by themselves: after a signal they get
    // a moment, then the server stops.
    let served = async {
        match tls {
            Some(cfg) => {
                axum::serve(tls::TlsListener::new(tcp, cfg), make)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => {
                axum::serve(guard::Capped::new(tcp), make)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    };
    let deadline = async {
        o.interrupt.signalled().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let result = tokio::select! {
        r = served => r.map_err(EngineError::io("serving")),
        () = deadline => Ok(()),
    };
    // Runs in flight saw the signal: they start nothing new and finish
    // the steps they are in, as a CLI command would. (A second signal
    // aborts the whole command, and the CLI records the deployment.)
    server.runs.close();
    server.runs.wait().await;
    result
}

/// Where the served store lives: `[serve] store_dir`, else the directory
/// of a `file://` `[store] url`, else `.cutover/store`.
fn store_dir(ctx: &Context) -> PathBuf {
    let c = &ctx.project.config;
    c.serve_store_dir
        .clone()
        .or_else(|| {
            c.store_url
                .as_deref()
                .and_then(|u| u.strip_prefix("file://"))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| ctx.workspace.join("store"))
}

/// Without tokens (CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1), the only guard
/// is that requests come from this machine to this machine: a page on
/// another site (DNS rebinding, a cross-site form) names another host, or
/// sends its own origin.
async fn only_this_machine(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let local = |host: &str| {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let origin_ok = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_none_or(|o| o == format!("http://{host}"));
    if !local(&host) || !origin_ok {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "this server runs without tokens and answers only requests from this machine to this machine\n",
        )
            .into_response();
    }
    next.run(req).await
}

fn router(server: Arc<Server>) -> Router {
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    let mut r = Router::new()
        .route("/", get(pages::to_admin))
        .route("/_admin", get(pages::overview))
        .route("/_admin/", get(pages::overview))
        .route("/_admin/login", get(pages::login_form).post(pages::login))
        .route("/_admin/logout", post(pages::logout))
        .route("/_admin/refresh", post(pages::refresh))
        .route("/_admin/deploy", post(pages::deploy))
        .route("/_admin/jobs/{job}", get(pages::job))
        .route("/_admin/jobs/{job}/{op}", post(pages::change))
        .route("/_admin/releases", get(pages::releases))
        .route("/_admin/deployments", get(pages::deployments))
        .route("/_admin/audit", get(pages::audit))
        .route("/_admin/events", get(pages::events))
        .route("/_admin/static/{file}", get(pages::static_file))
        .route("/api/overview", get(api::overview))
        .route("/api/jobs/{job}", get(api::job))
        .route("/api/deployments", get(api::deployments))
        .route("/api/audit", get(api::audit))
        .route("/api/releases", get(api::releases))
        .route("/api/releases/{ticket}", get(api::release))
        .route("/api/events", get(api::events))
        .route("/api/refresh", post(api::refresh))
        .route("/api/deploy", post(api::deploy))
        .route("/api/channel/{job}/{op}", post(api::change))
        .route("/store/{*path}", get(api::store_get).put(api::store_put))
        .layer(DefaultBodyLimit::max(64 << 10))
        .with_state(server.clone());
    if server.tokens.is_none() {
        r = r.layer(axum::middleware::from_fn(only_this_machine));
    }
    for (name, value) in headers {
        r = r.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    r
}
