//! `cutover serve` over plain HTTP: what it refuses to start with, the API
//! (statuses that follow exit codes, the same audit lines as the CLI), the
//! UI's session, CSRF and escaping, the store (`cutover publish` to an
//! `http://` store, its compare-and-swap and its refusals), no secret in
//! anything it serves, and a bounded load while a deploy runs.

use std::path::{Path, PathBuf};

use crate::support::*;

pub const TOKEN_ANA: &str = "ana-token-0123456789";
const TOKEN_BOB: &str = "bob-token-9876543210";
const POISON: &str = "p0is0n-s3rve-51c2";

/// A project on two local workers publishing `api` (with a canary) to a
/// file store, with a signing key and a tokens file naming ana and bob.
pub struct Site {
    pub _t: tempfile::TempDir,
    pub p: Project,
    pub store: PathBuf,
    pub key: String,
    pub tokens_file: String,
}

pub fn sha256_hex(s: &str) -> String {
    use sha2_hex::hex;
    hex(s)
}

/// sha256 through the system's sha256sum (a test does not trust the code
/// it checks to compute what it compares with).
mod sha2_hex {
    pub fn hex(s: &str) -> String {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write");
        let out = c.wait_with_output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("hash")
            .to_string()
    }
}

pub fn site(store_url: Option<&str>) -> Site {
    let t = tempfile::tempdir().expect("tmp");
    let store = t.path().join("store");
    let keys = t.path().join("k");
    let p = Project::new();
    let url = store_url.map_or_else(|| format!("file://{}", store.display()), str::to_string);
    p.write(
        "cutover.toml",
        &format!(
            "name = \"shop\"\n[store]\nurl = \"{url}\"\n[serve]\nstore_dir = \"{}\"\n[trust]\npublic_keys = [\"{}\"]\n",
            store.display(),
            keys.join("cutover-signing.pub").display()
        ),
    );
    p.write("workers.toml", TWO_LOCAL_WORKERS);
    p.job(
        "api",
        "version = \"1.0.0\"\n[canary]\ncount = 1\nsoak = \"0s\"\n",
    );
    p.write("jobs/api/version.txt.tpl", "{{ job.version }}\n");
    p.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key = keys.join("cutover-signing.key").display().to_string();
    let tokens_file = t.path().join("tokens");
    std::fs::write(
        &tokens_file,
        format!(
            "# who may run the fleet\nana:{}\nbob:sha256:{}\n",
            sha256_hex(TOKEN_ANA),
            sha256_hex(TOKEN_BOB)
        ),
    )
    .expect("tokens");
    chmod(&tokens_file, 0o600);
    p.env
        .borrow_mut()
        .push(("CUTOVER_SIGNING_KEY_FILE".into(), key.clone()));
    Site {
        _t: t,
        p,
        store,
        key,
        tokens_file: tokens_file.display().to_string(),
    }
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Site {
    pub fn serve(&self) -> Served {
        Served::start(&self.p, &[("CUTOVER_ADMIN_TOKENS_FILE", &self.tokens_file)])
    }

    /// Publishes `version` of api (stable for the first, else canary).
    pub fn publish(&self, version: &str, channel: &str) {
        self.p.job(
            "api",
            &format!("version = \"{version}\"\n[canary]\ncount = 1\nsoak = \"0s\"\n"),
        );
        self.p
            .write("jobs/api/build.txt", &format!("build {version}\n"));
        self.p.expect(&["publish", "api", "--channel", channel], 0);
    }

    pub fn audit(&self) -> Vec<String> {
        std::fs::read_to_string(self.p.path().join(".cutover/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// An audit line without what differs between two runs of one command:
/// the time, the pid, the actor, and the numbers the run was given.
fn audit_shape(line: &str) -> String {
    line.split(' ')
        .skip(1)
        .filter(|f| !f.starts_with("pid=") && !f.starts_with("user="))
        .collect::<Vec<_>>()
        .join(" ")
        .split(" detail=")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The version api runs on `worker` (its rendered `version.txt`), or "".
fn runs(p: &Project, worker: &str) -> String {
    std::fs::read_to_string(p.path().join(format!(
        "local-workers/{worker}/jobs/api/current/version.txt"
    )))
    .map(|t| t.trim().to_string())
    .unwrap_or_default()
}

#[test]
fn serve_refuses_to_start_unsafe() {
    let s = site(None);
    let p = &s.p;
    let out = p.expect(&["serve", "--listen", "127.0.0.1:0"], 2);
    assert!(out.stderr.contains("no admin token"), "{out:?}");
    let out = p.cutover_env(
        &["serve", "--listen", "0.0.0.0:0"],
        &[("CUTOVER_ADMIN_TOKEN", TOKEN_ANA)],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("refusing plain HTTP on 0.0.0.0"),
        "{out:?}"
    );
    let out = p.cutover_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN", "1"),
            ("CUTOVER_ENV", "production"),
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("refused with CUTOVER_ENV=production"),
        "{out:?}"
    );
    chmod(Path::new(&s.tokens_file), 0o644);
    let out = p.cutover_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("CUTOVER_ADMIN_TOKENS_FILE", &s.tokens_file)],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("can be read by other users"), "{out:?}");
    std::fs::write(&s.tokens_file, format!("ana:{TOKEN_ANA}\n")).expect("write");
    chmod(Path::new(&s.tokens_file), 0o600);
    let out = p.cutover_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("CUTOVER_ADMIN_TOKENS_FILE", &s.tokens_file)],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(":1: not a `name:sha256` line"),
        "a raw token in the tokens file is refused at its line: {out:?}"
    );
    let out = p.expect(
        &["serve", "--listen", "127.0.0.1:0", "--tls-cert", "c.pem"],
        2,
    );
    assert!(out.stderr.contains("--tls-key"), "{out:?}");
    // A blank or short token, a token file that is a dir, one token for two
    // names: refused, with what to do.
    for (token, says) in [
        ("    ", "is blank"),
        ("abc", "3 character(s)"),
        (
            "0123456789abcdef\nsecond-token-0000",
            "one token, on one line",
        ),
    ] {
        let out = p.cutover_env(
            &["serve", "--listen", "127.0.0.1:0"],
            &[("CUTOVER_ADMIN_TOKEN", token)],
        );
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(says) && out.stderr.contains("help:"),
            "{out:?}"
        );
    }
    // doctor fails what serve would refuse.
    let out = p.cutover_env(&["doctor"], &[("CUTOVER_ADMIN_TOKEN", "short")]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("✗ admin auth configured: CUTOVER_ADMIN_TOKEN is 5 character(s)"),
        "{out:?}"
    );
    let dir = tempfile::tempdir().expect("dir");
    let out = p.cutover_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[(
            "CUTOVER_ADMIN_TOKENS_FILE",
            dir.path().to_str().expect("utf8"),
        )],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let h = sha256_hex(TOKEN_ANA);
    std::fs::write(&s.tokens_file, format!("ana:{h}\nbob:{h}\n")).expect("write");
    let out = p.cutover_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("CUTOVER_ADMIN_TOKENS_FILE", &s.tokens_file)],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(":2: `bob` repeats"), "{out:?}");
    // A served store is a host and a port: a path is refused by check.
    let toml = std::fs::read_to_string(p.path().join("cutover.toml")).expect("toml");
    p.write(
        "cutover.toml",
        &toml.replace(
            &format!("file://{}", s.store.display()),
            "http://127.0.0.1:7878/prefix",
        ),
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("is not a store this cutover can use"),
        "{out:?}"
    );
}

#[test]
fn without_tokens_the_server_answers_this_machine_only() {
    let s = site(None);
    let server = Served::start(&s.p, &[("CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN", "1")]);
    let http = Http::new();
    let url = format!("{}/api/overview", server.base);
    assert_eq!(http.send(http.client.get(&url)).status, 200);
    let r = http.send(http.client.get(&url).header("host", "evil.example:7878"));
    assert_eq!(r.status, 403, "a rebound name is refused: {r:?}");
    let r = http.send(
        http.client
            .post(format!("{}/api/refresh", server.base))
            .header("origin", "http://evil.example"),
    );
    assert_eq!(r.status, 403, "another site's request is refused: {r:?}");
    // Reads of a private store need the read token even here.
    let toml = std::fs::read_to_string(s.p.path().join("cutover.toml")).expect("toml");
    s.p.write(
        "cutover.toml",
        &toml.replace(
            "[serve]\n",
            &format!(
                "[serve]\nstore_read_token = \"sha256:{}\"\n",
                sha256_hex("reader-0123456789")
            ),
        ),
    );
    drop(server);
    let server = Served::start(&s.p, &[("CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN", "1")]);
    let url = format!("{}/store/api/releases.json", server.base);
    let r = http.send(http.client.get(&url));
    assert_eq!(r.status, 401, "{r:?}");
    // Wrong read tokens count; once limited, the right one waits too.
    let wrong: Vec<u16> = (0..5)
        .map(|i| {
            http.send(http.client.get(&url).bearer_auth(format!("guess-{i}")))
                .status
        })
        .collect();
    assert_eq!(wrong, [401, 401, 401, 401, 401]);
    let r = http.send(http.client.get(&url).bearer_auth("reader-0123456789"));
    assert_eq!(r.status, 429, "a guess never learns it was right: {r:?}");
}

#[test]
fn serve_speaks_https_with_secure_cookies() {
    let s = site(None);
    let t = tempfile::tempdir().expect("tmp");
    let (cert, key) = (t.path().join("cert.pem"), t.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = Served::start_with(
        &s.p,
        &[
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
        ],
        &[("CUTOVER_ADMIN_TOKENS_FILE", &s.tokens_file)],
    );
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let pem = std::fs::read(&cert).expect("cert");
    let http = Http::with_client(
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client"),
    );
    let r = http.send(
        http.client
            .get(format!("{}/api/overview", server.base))
            .bearer_auth(TOKEN_ANA),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = http.send(http.client.get(format!("{}/_admin/login", server.base)));
    assert!(
        r.header("set-cookie").contains("; Secure"),
        "HTTPS cookies are Secure: {r:?}"
    );
    // Plain HTTP to the same port gets no page.
    let plain = server.base.replace("https://", "http://");
    let answered = http.block_on(async {
        reqwest::Client::new()
            .get(format!("{plain}/api/overview"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(
        answered.as_ref().map_or(true, |st| *st != 200),
        "{answered:?}"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn the_api_answers_the_cli_document_with_the_status_of_its_exit_code() {
    let s = site(None);
    let p = &s.p;
    s.publish("1.0.0", "stable");
    let server = s.serve();
    let http = Http::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.client.get(url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        http.send(r)
    };
    let post = |path: &str, token: &str, body: serde_json::Value| {
        http.send(
            http.client
                .post(url(path))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };

    // No token, a wrong one: 401, and the sign-in limit after five tries.
    let r = get("/api/overview", None);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["outcome"], "unauthorized");
    let r = get("/api/overview", Some("nope"));
    assert_eq!(r.status, 401, "{r:?}");

    // A deploy through the API: the CLI's document, 200, and the audit
    // line the CLI writes, with the token's name as the actor.
    let r = post("/api/deploy", TOKEN_ANA, serde_json::json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["outcome"], "success");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["report"]["seq"], 1);
    assert_eq!(runs(p, "a"), "1.0.0");
    let cli = p.expect(&["--json", "deploy"], 0);
    let cli: serde_json::Value = serde_json::from_str(&cli.stdout).expect("json");
    assert_eq!(
        cli.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        doc.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        "the API answers the CLI's --json document"
    );
    let audit = s.audit();
    assert_eq!(
        audit.len(),
        3,
        "publish, deploy by ana, deploy by tester: {audit:?}"
    );
    assert!(audit[1].contains(" user=ana "), "{audit:?}");
    assert!(audit[2].contains(" user=tester "), "{audit:?}");
    assert_eq!(
        audit_shape(&audit[1]),
        audit_shape(&audit[2]).replace("outcome=unchanged", "outcome=success"),
        "a UI/API action and the CLI command write the same audit line but for the actor"
    );

    // Bad input: 400 with the error and its help; nothing changes.
    let r = post(
        "/api/deploy",
        TOKEN_ANA,
        serde_json::json!({"jobs": ["nope"]}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["exit_code"], 2);
    assert!(r.json()["help"].as_str().is_some_and(|h| h.contains("api")));
    let r = post(
        "/api/deploy",
        TOKEN_ANA,
        serde_json::json!({"dry-run": true}),
    );
    assert_eq!(r.status, 400, "an unknown option is refused: {r:?}");
    let r = post("/api/deploy", TOKEN_ANA, serde_json::json!([]));
    assert_eq!(r.status, 400, "an array is not options: {r:?}");
    let r = http.send(
        http.client
            .get(url("/api/overview"))
            .header("authorization", format!("bearer {TOKEN_ANA}")),
    );
    assert_eq!(r.status, 200, "the scheme is case-insensitive: {r:?}");
    let r = post(
        "/api/channel/api/canary",
        TOKEN_BOB,
        serde_json::json!({"version": "1.0.0"}),
    );
    assert_eq!(r.status, 400, "a change without a reason is refused: {r:?}");
    let r = post(
        "/api/channel/api/launch",
        TOKEN_BOB,
        serde_json::json!({"version": "1.0.0", "reason": "x"}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = post(
        "/api/channel/api/canary",
        TOKEN_BOB,
        serde_json::json!({"version": "1.0.0", "reason": "ok\n2026 user=root forged", "ticket": "T"}),
    );
    assert_eq!(
        r.status, 400,
        "a control character in a reason is refused: {r:?}"
    );

    // A canary and its promotion, by bob, with a reason and a ticket.
    s.publish("1.1.0", "canary");
    let r = post(
        "/api/channel/api/canary",
        TOKEN_BOB,
        serde_json::json!({"version": "1.1.0", "reason": "try <b>it</b>", "ticket": "T-9"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["report"]["channels"]["canary"], "1.1.0");
    assert_eq!(runs(p, "a"), "1.1.0");
    assert_eq!(runs(p, "b"), "1.0.0");
    // The same canary from the CLI (after a rollback ends the first) writes
    // the same audit line but for the actor.
    let by_api = s.audit().pop().expect("audit");
    p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--reason",
            "again",
        ],
        0,
    );
    p.expect(
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--reason",
            "try <b>it</b>",
            "--ticket",
            "T-9",
        ],
        0,
    );
    let by_cli = s.audit().pop().expect("audit");
    assert_eq!(
        audit_shape(&by_api),
        audit_shape(&by_cli),
        "{by_api}\n{by_cli}"
    );
    assert!(
        by_api.contains(
            "command=\"cutover channel canary api --version 1.1.0 --reason 'try <b>it</b>' --ticket T-9\""
        ),
        "{by_api}"
    );
    let detail = |l: &str| {
        l.split(" detail=")
            .nth(1)
            .unwrap_or_default()
            .split(" seq ")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        detail(&by_api).replace("actor bob", "actor tester"),
        detail(&by_cli),
        "{by_api}\n{by_cli}"
    );
    let r = post(
        "/api/channel/api/promote",
        TOKEN_BOB,
        serde_json::json!({"version": "1.1.0", "reason": "soaked"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(runs(p, "b"), "1.1.0");
    let last = s.audit().pop().expect("audit");
    assert!(
        last.contains(" user=bob ")
            && last.contains(
                "command=\"cutover channel promote api --version 1.1.0 --reason soaked\""
            ),
        "{last}"
    );

    // Verification refused: 422. A tampered index is refused before any
    // worker is touched.
    let index = s.store.join("api/releases.json");
    let good = std::fs::read(&index).expect("index");
    std::fs::write(
        &index,
        String::from_utf8_lossy(&good).replace("\"1.1.0\"", "\"1.1.1\""),
    )
    .expect("tamper");
    let r = post(
        "/api/channel/api/rollback",
        TOKEN_BOB,
        serde_json::json!({"version": "1.0.0", "reason": "bad"}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["exit_code"], 4);
    assert_eq!(runs(p, "b"), "1.1.0");
    std::fs::write(&index, &good).expect("restore");

    // The lock held by a CLI deploy at a gate: 409, with the holder.
    p.job("web", "version = \"1\"\n");
    let gates = gated_makefile(p, "web", "start");
    let deploy = p.spawn(&["deploy", "--jobs", "web"]);
    wait_for(&gates.path().join("reached"));
    let r = post(
        "/api/channel/api/rollback",
        TOKEN_BOB,
        serde_json::json!({"version": "1.0.0", "reason": "now"}),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.json()["holder"]["user"], "tester", "{r:?}");
    std::fs::write(gates.path().join("go"), "").expect("go");
    let out = finish(deploy);
    assert_eq!(out.code, 0, "{out:?}");

    // Reads: deployments, audit, releases, one job.
    let r = get("/api/deployments", Some(TOKEN_ANA));
    assert_eq!(r.status, 200);
    assert!(r.json()["deployments"]
        .as_array()
        .is_some_and(|d| d.len() >= 4));
    let r = get("/api/jobs/api", Some(TOKEN_ANA));
    assert_eq!(r.json()["job"]["channels"]["stable"], "1.1.0", "{r:?}");
    let r = get("/api/jobs/nope", Some(TOKEN_ANA));
    assert_eq!(r.status, 400, "{r:?}");
    let r = get("/api/audit", Some(TOKEN_ANA));
    assert!(r.body.contains("T-9"), "{r:?}");

    // Five wrong tokens a minute from one address, then even a right one
    // waits: a guess never learns it was right. From an address of its
    // own, so the minute starts here.
    let guesser = Http::with_client(
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 9]))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("client"),
    );
    let guess = |token: &str| {
        guesser
            .send(guesser.client.get(url("/api/overview")).bearer_auth(token))
            .status
    };
    let statuses: Vec<u16> = (0..6).map(|_| guess("wrong")).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    assert_eq!(guess(TOKEN_ANA), 429);
    assert_eq!(
        get("/api/overview", Some(TOKEN_ANA)).status,
        200,
        "another address is not held back"
    );
    assert_eq!(server.stop(), 0, "SIGTERM stops the server cleanly");
}

/// Signs in through the login form; returns the session cookie and the
/// CSRF token of the overview's forms.
fn sign_in(http: &Http, base: &str, token: &str) -> (String, String) {
    let login = http.send(http.client.get(format!("{base}/_admin/login")));
    let login_cookie = login.header("set-cookie");
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"),
        "{login_cookie}"
    );
    let cookie = login_cookie.split(';').next().expect("cookie").to_string();
    let csrf = field(&login.body, "csrf");
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/login"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("token", token)]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    let set = r.header("set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/"] {
        assert!(set.contains(attr), "session cookie lacks {attr}: {set}");
    }
    assert!(
        !set.contains("Secure"),
        "no Secure on loopback (plain HTTP): {set}"
    );
    let session = set.split(';').next().expect("cookie").to_string();
    let page = http.send(
        http.client
            .get(format!("{base}/_admin"))
            .header("cookie", &session),
    );
    assert_eq!(page.status, 200, "{page:?}");
    (session, field(&page.body, "csrf"))
}

fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in:\n{html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').expect("end")].to_string()
}

#[test]
fn the_ui_needs_a_session_and_csrf_escapes_everything_and_leaks_no_secret() {
    let s = site(None);
    let p = &s.p;
    // A secret that reaches the workers, and a job whose start prints it
    // (and markup) and fails: the failure's message carries both.
    p.job("leaky", "version = \"1\"\n");
    p.expect(
        &["kv", "put", "leaky", "db_password", POISON, "--secret"],
        0,
    );
    p.write(
        "jobs/leaky/db.conf.tpl",
        "password = {{ kv.db_password }}\n",
    );
    p.write(
        "jobs/leaky/Makefile",
        "start:\n\t@cat db.conf; echo '<script>alert(1)</script>'; exit 1\n",
    );
    s.publish("1.0.0", "stable");
    let server = s.serve();
    let http = Http::new();
    let base = server.base.clone();

    // Not signed in: pages send to the login form; the feed refuses.
    let r = http.send(http.client.get(format!("{base}/_admin")));
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), "/_admin/login");
    assert_eq!(
        http.send(http.client.get(format!("{base}/_admin/events")))
            .status,
        401
    );
    // A wrong token does not sign in.
    let login = http.send(http.client.get(format!("{base}/_admin/login")));
    let cookie = login.header("set-cookie");
    let cookie = cookie.split(';').next().expect("cookie");
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/login"))
            .header("cookie", cookie)
            .form(&[
                ("csrf", field(&login.body, "csrf").as_str()),
                ("token", "nope"),
            ]),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("set-cookie").contains("cutover_login"),
        "no session: {r:?}"
    );

    let (session, csrf) = sign_in(&http, &base, TOKEN_ANA);
    let page = |path: &str| {
        http.send(
            http.client
                .get(format!("{base}{path}"))
                .header("cookie", &session),
        )
    };
    let r = page("/_admin");
    let csp = r.header("content-security-policy");
    assert!(
        csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.header("x-content-type-options"), "nosniff");

    // A POST without the CSRF token, or with a forged one: 403, nothing run.
    let audit_before = s.audit().len();
    for token in [None, Some("forged")] {
        let mut form = vec![];
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        let r = http.send(
            http.client
                .post(format!("{base}/_admin/deploy"))
                .header("cookie", &session)
                .form(&form),
        );
        assert_eq!(r.status, 403, "{r:?}");
    }
    // Another session's token is forged too.
    let (_, other_csrf) = sign_in(&http, &base, TOKEN_BOB);
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/deploy"))
            .header("cookie", &session)
            .form(&[("csrf", other_csrf.as_str())]),
    );
    assert_eq!(r.status, 403, "{r:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        s.audit().len(),
        audit_before,
        "a refused form changes nothing"
    );
    assert_eq!(runs(p, "a"), "", "nothing was deployed");

    // With the token: the deploy runs in the background, as ana.
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/deploy"))
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str())]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    wait_until(|| s.audit().len() > audit_before);
    assert!(s.audit().last().is_some_and(|l| l.contains(" user=ana ")));
    assert_eq!(runs(p, "a"), "1.0.0");

    // A channel change whose reason is markup: shown as text everywhere.
    s.publish("1.1.0", "canary");
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/jobs/api/canary"))
            .header("cookie", &session)
            .form(&[
                ("csrf", csrf.as_str()),
                ("version", "1.1.0"),
                ("reason", "<script>alert('x')</script>"),
            ]),
    );
    assert_eq!(r.status, 303, "{r:?}");
    wait_until(|| runs(p, "a") == "1.1.0");
    wait_until(|| page("/_admin/jobs/api").body.contains("success (exit 0)"));
    for path in [
        "/_admin",
        "/_admin/jobs/api",
        "/_admin/audit",
        "/_admin/deployments",
        "/_admin/releases",
    ] {
        let r = page(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            !r.body.contains("<script>alert"),
            "{path} shows markup unescaped:\n{}",
            r.body
        );
        assert!(!r.body.contains(POISON), "{path} shows the secret");
    }
    assert!(page("/_admin/audit").body.contains("&lt;script&gt;alert"));

    // No secret in any API answer or in the feed.
    for path in [
        "/api/overview",
        "/api/deployments",
        "/api/audit",
        "/api/releases",
        "/api/jobs/api",
    ] {
        let r = http.send(
            http.client
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN_ANA),
        );
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains(POISON), "{path} answers the secret");
    }
    let feed = std::fs::read_to_string(p.path().join(".cutover/events.jsonl")).expect("feed");
    assert!(
        feed.contains("\"job\":\"leaky\",\"worker\":\"a\",\"action\":\"start\",\"ok\":false")
            && feed.contains("password = <redacted>"),
        "the failure's output reached the feed, redacted: {feed}"
    );
    assert!(!feed.contains(POISON), "the feed holds the secret");
    let feed_page = page("/_admin");
    assert!(
        feed_page.body.contains("leaky@a: start FAILED")
            && feed_page.body.contains("password = &lt;redacted&gt;"),
        "{}",
        feed_page.body
    );

    // Sign-out ends the session, and the feed it had open.
    let mut events = http
        .block_on(
            http.client
                .get(format!("{base}/_admin/events"))
                .header("cookie", &session)
                .send(),
        )
        .expect("events");
    assert_eq!(events.status().as_u16(), 200);
    let r = http.send(
        http.client
            .post(format!("{base}/_admin/logout"))
            .header("cookie", &session)
            .form(&[("csrf", csrf.as_str())]),
    );
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(page("/_admin").status, 303, "the session is gone");
    let ended = http.block_on(async {
        let drain = async { while let Ok(Some(_)) = events.chunk().await {} };
        tokio::time::timeout(std::time::Duration::from_secs(15), drain).await
    });
    assert!(ended.is_ok(), "the live feed of a signed-out session ends");
    assert_eq!(server.stop(), 0);
}

#[test]
fn an_http_store_takes_publishes_with_compare_and_swap_and_refuses_escapes() {
    // The server's project keeps the store; a second project publishes to
    // it over HTTP and deploys from it.
    let home = site(None);
    let server = home.serve();
    let base = server.base.clone();
    let s = site(Some(&base));
    let p = &s.p;
    // The key and trust of the home site, so one index serves both.
    p.write(
        "cutover.toml",
        &std::fs::read_to_string(p.path().join("cutover.toml"))
            .expect("toml")
            .replace(
                &format!("{}", Path::new(&s.key).with_extension("pub").display()),
                &format!("{}", Path::new(&home.key).with_extension("pub").display()),
            ),
    );
    p.env.borrow_mut().clear();
    p.env
        .borrow_mut()
        .push(("CUTOVER_SIGNING_KEY_FILE".into(), home.key.clone()));

    // Without a token the store refuses the write, and says what to do.
    p.job(
        "api",
        "version = \"1.0.0\"\n[canary]\ncount = 1\nsoak = \"0s\"\n",
    );
    let out = p.expect(&["publish", "api"], 2);
    assert!(out.stderr.contains("CUTOVER_ADMIN_TOKEN"), "{out:?}");
    assert!(!home.store.join("api/releases.json").exists());

    // With ana's token: published, the same bytes as the server keeps.
    p.env
        .borrow_mut()
        .push(("CUTOVER_ADMIN_TOKEN".into(), TOKEN_ANA.into()));
    p.expect(&["publish", "api"], 0);
    let index = home.store.join("api/releases.json");
    assert!(index.exists());
    let http = Http::new();
    let r = http.send(http.client.get(format!("{base}/store/api/releases.json")));
    assert_eq!(r.status, 200, "reads are anonymous: {r:?}");
    assert_eq!(r.body.as_bytes(), std::fs::read(&index).expect("index"));
    let etag = r.header("etag");
    assert!(etag.starts_with('"'), "{etag}");

    // Two publishers at once: both versions land (the loser re-reads).
    let q = site(Some(&base));
    q.p.write(
        "cutover.toml",
        &std::fs::read_to_string(p.path().join("cutover.toml")).expect("toml"),
    );
    q.p.env.borrow_mut().clear();
    q.p.env.borrow_mut().extend(p.env.borrow().iter().cloned());
    p.job(
        "api",
        "version = \"1.1.0\"\n[canary]\ncount = 1\nsoak = \"0s\"\n",
    );
    q.p.job(
        "api",
        "version = \"1.2.0\"\n[canary]\ncount = 1\nsoak = \"0s\"\n",
    );
    let a = p.spawn(&["publish", "api", "--channel", "canary"]);
    let b = q.p.spawn(&["publish", "api", "--channel", "canary"]);
    let (a, b) = (finish(a), finish(b));
    assert_eq!((a.code, b.code), (0, 0), "{a:?}\n{b:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).expect("index")).expect("json");
    let versions: Vec<&str> = doc["signed"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        assert!(versions.contains(&v), "{v} lost: {versions:?}");
    }
    assert_eq!(doc["signed"]["seq"], 3);

    // A deploy reads the index and the artifact over HTTP.
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("deployment 1"), "{out:?}");
    assert_eq!(runs(p, "b"), "1.0.0");

    // The store's refusals: a write without a token, a stale If-Match, no
    // precondition at all, an escape, an oversize index, a changed artifact.
    let put = |path: &str, token: Option<&str>, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut r = http.client.put(format!("{base}/store/{path}")).body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        http.send(r)
    };
    let before = std::fs::read(&index).expect("index");
    assert_eq!(
        put(
            "api/releases.json",
            None,
            &[("if-match", &etag)],
            b"{}".to_vec()
        )
        .status,
        401
    );
    assert_eq!(
        put(
            "api/releases.json",
            Some(TOKEN_ANA),
            &[("if-match", &etag)],
            before.clone()
        )
        .status,
        412,
        "the ETag read before two publishes is stale"
    );
    let now = http
        .send(http.client.get(format!("{base}/store/api/releases.json")))
        .header("etag");
    assert_eq!(
        put(
            "api/releases.json",
            Some(TOKEN_ANA),
            &[("if-match", &now)],
            b"{\"a\":5}".to_vec()
        )
        .status,
        400,
        "what is not an index of the job is refused"
    );
    assert_eq!(
        put(
            "api/releases.json",
            Some(TOKEN_ANA),
            &[("if-match", "*")],
            before.clone()
        )
        .status,
        412,
        "If-Match: * is no way around the compare"
    );
    let audit = std::fs::read_to_string(home.p.path().join(".cutover/audit.log")).expect("audit");
    assert!(
        audit.contains("user=ana")
            && audit.contains("command=\"PUT /store/api/releases.json\" outcome=conflict rc=1"),
        "every store write is audited on the server: {audit}"
    );
    assert_eq!(
        put("api/releases.json", Some(TOKEN_ANA), &[], before.clone()).status,
        412
    );
    assert_eq!(
        std::fs::read(&index).expect("index"),
        before,
        "the index is unchanged"
    );
    for bad in [
        "../x.tar.zst",
        "api/%2e%2e/x.tar.zst",
        "api%2Freleases.json",
        "api/.lock",
        "api/sub/releases.json",
    ] {
        let r = put(bad, Some(TOKEN_ANA), &[], b"x".to_vec());
        assert!(r.status == 400 || r.status == 404, "{bad}: {r:?}");
        let r = http.send(http.client.get(format!("{base}/store/{bad}")));
        assert!(r.status == 400 || r.status == 404, "{bad}: {r:?}");
    }
    let r = put(
        "api/releases.json",
        Some(TOKEN_ANA),
        &[(
            "if-match",
            &http
                .send(http.client.get(format!("{base}/store/api/releases.json")))
                .header("etag"),
        )],
        vec![b' '; 2 << 20],
    );
    assert_eq!(r.status, 413, "{r:?}");
    let artifact = std::fs::read_dir(home.store.join("api"))
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".tar.zst"))
        .expect("an artifact");
    let r = put(
        &format!("api/{artifact}"),
        Some(TOKEN_ANA),
        &[],
        b"other bytes".to_vec(),
    );
    assert_eq!(r.status, 400, "an artifact never changes: {r:?}");
    let same = std::fs::read(home.store.join("api").join(&artifact)).expect("artifact");
    let r = put(
        &format!("api/{artifact}"),
        Some(TOKEN_ANA),
        &[],
        same.clone(),
    );
    assert_eq!(r.status, 200, "the same bytes again: {r:?}");
    let r = http.send(http.client.get(format!("{base}/store/api/{artifact}")));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("etag"),
        format!("\"{}\"", &artifact[artifact.len() - 72..artifact.len() - 8])
    );
    assert_eq!(
        r.header("content-length"),
        same.len().to_string(),
        "an artifact streams whole"
    );
    // A symlink planted in the store is not followed, as a dir or a file.
    let sha = "a".repeat(64);
    std::os::unix::fs::symlink("/etc", home.store.join("evil")).expect("symlink");
    let r = http.send(
        http.client
            .get(format!("{base}/store/evil/1.0.{sha}.tar.zst")),
    );
    assert_eq!(r.status, 404, "{r:?}");
    std::os::unix::fs::symlink(
        "/etc/passwd",
        home.store.join(format!("api/9.9.9.{sha}.tar.zst")),
    )
    .expect("symlink");
    let r = http.send(
        http.client
            .get(format!("{base}/store/api/9.9.9.{sha}.tar.zst")),
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(!r.body.contains("root:"), "{r:?}");
    // An upload whose bytes are not the sha256 its name says is refused.
    let r = put(
        &format!("api/2.0.0.{sha}.tar.zst"),
        Some(TOKEN_ANA),
        &[],
        b"not that".to_vec(),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!home.store.join(format!("api/2.0.0.{sha}.tar.zst")).exists());
    drop(server);

    // A private store: reads need the read token (or an admin token).
    let read_token = "reader-0123456789";
    let toml = std::fs::read_to_string(home.p.path().join("cutover.toml")).expect("toml");
    home.p.write(
        "cutover.toml",
        &toml.replace(
            "[serve]\n",
            &format!(
                "[serve]\nstore_read_token = \"sha256:{}\"\n",
                sha256_hex(read_token)
            ),
        ),
    );
    home.p.expect(&["check"], 0);
    let server = home.serve();
    let base = server.base.clone();
    let url = format!("{base}/store/api/releases.json");
    assert_eq!(http.send(http.client.get(&url)).status, 401);
    assert_eq!(
        http.send(http.client.get(&url).bearer_auth("wrong")).status,
        401
    );
    assert_eq!(
        http.send(http.client.get(&url).bearer_auth(read_token))
            .status,
        200
    );
    assert_eq!(
        http.send(http.client.get(&url).bearer_auth(TOKEN_BOB))
            .status,
        200
    );
}

#[test]
fn the_overview_api_holds_up_under_load_while_a_deploy_runs() {
    let s = site(None);
    let p = &s.p;
    s.publish("1.0.0", "stable");
    let server = s.serve();
    let http = Http::new();
    // A deploy that takes a while: a working-tree job whose start sleeps.
    p.job("web", "version = \"1\"\n");
    p.write(
        "jobs/web/Makefile",
        &MAKEFILE.replacen("start:\n", "start:\n\t@sleep 2\n", 1),
    );
    let deploy = p.spawn(&["deploy"]);
    let feed = p.path().join(".cutover/events.jsonl");
    wait_until(|| std::fs::read_to_string(&feed).is_ok_and(|f| f.contains("web")));
    let clients = 8;
    let per_client = 150;
    let started = std::time::Instant::now();
    let results: Vec<(u16, std::time::Duration)> = http.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let client = http.client.clone();
            let url = format!("{}/api/overview", server.base);
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..per_client {
                    let t = std::time::Instant::now();
                    let status = client
                        .get(&url)
                        .bearer_auth(TOKEN_ANA)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    out.push((status, t.elapsed()));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let wall = started.elapsed();
    let out = finish(deploy);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("web@a: start ok"), "{out:?}");
    let errors = results.iter().filter(|(s, _)| *s != 200).count();
    assert_eq!(errors, 0, "every overview answered 200 during the deploy");
    let mut lat: Vec<_> = results
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    println!(
        "load: {} requests from {clients} clients in {:.2} s ({:.0}/s) during a deploy; latency p50 {:.1} ms, p99 {:.1} ms; server peak RSS {} MiB",
        results.len(),
        wall.as_secs_f64(),
        results.len() as f64 / wall.as_secs_f64(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        rss_kb / 1024
    );
    assert!(
        rss_kb < 256 * 1024,
        "server memory is bounded: peak {rss_kb} kB"
    );

    // An action runs with the project on disk, not the one loaded at start.
    p.job("web", "version = \"2\"\n");
    let r = http.send(
        http.client
            .post(format!("{}/api/deploy", server.base))
            .bearer_auth(TOKEN_ANA)
            .header("content-type", "application/json")
            .body(r#"{"jobs": ["web"]}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let plan = p.expect(&["deploy", "--dry-run", "--jobs", "web"], 0);
    assert!(plan.stdout.contains("plan: 2 unchanged"), "{plan:?}");

    // A target that prints megabytes and fails: its message is kept cut,
    // in the store, the feed and every answer. A name with a newline
    // forges no feed line.
    p.job("loud", "version = \"1\"\n");
    p.write(
        "jobs/loud/Makefile",
        "start:\n\t@head -c 3000000 /dev/zero | tr '\\0' x; echo; echo the-real-error; exit 1\n",
    );
    let out = p.cutover_env(
        &["deploy", "--jobs", "loud"],
        &[(
            "CUTOVER_USER",
            "mallory\n2026 admin started: cutover channel promote",
        )],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let r = http.send(
        http.client
            .get(format!("{}/api/overview", server.base))
            .bearer_auth(TOKEN_ANA),
    );
    assert!(
        r.body.len() < 200_000,
        "the overview holds {} bytes",
        r.body.len()
    );
    assert!(
        r.body.contains("the-real-error"),
        "the end of the output is kept"
    );
    let feed = std::fs::read_to_string(p.path().join(".cutover/events.jsonl")).expect("feed");
    assert!(
        feed.len() < 1_000_000,
        "the feed holds {} bytes",
        feed.len()
    );
    assert!(
        feed.contains("mallory\u{fffd}2026 admin"),
        "the name's newline is shown as U+FFFD"
    );
}

#[test]
fn a_run_the_server_started_survives_sigterm_and_kill_9_is_resumed() {
    let s = site(None);
    let p = &s.p;
    p.job("web", "version = \"1\"\n");
    let gates = gated_makefile(p, "web", "start");
    let post_deploy = |base: String| {
        std::thread::spawn(move || {
            let http = Http::new();
            let _ = http.block_on(
                http.client
                    .post(format!("{base}/api/deploy"))
                    .bearer_auth(TOKEN_ANA)
                    .header("content-type", "application/json")
                    .body(r#"{"jobs": ["web"]}"#)
                    .send(),
            );
        })
    };

    // SIGTERM while an API deploy waits at its gate: the server waits for
    // the run, which finishes its step, records itself and frees the lock.
    let mut server = s.serve();
    let client = post_deploy(server.base.clone());
    wait_for(&gates.path().join("reached"));
    signal_pid(server.pid(), "TERM");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!server.exited(), "the server waits for its run");
    std::fs::write(gates.path().join("go"), "").expect("go");
    assert_eq!(server.stop_wait(), 0);
    let _ = client.join();
    let audit = s.audit();
    let last = audit.last().expect("audit");
    assert!(
        last.contains(" user=ana ")
            && last.contains("command=\"cutover deploy --jobs web\"")
            && last.contains("rc=143"),
        "the run recorded itself as interrupted by SIGTERM: {audit:?}"
    );
    let lock = p.expect(&["lock", "status"], 0);
    assert_eq!(lock.stdout.trim(), "unlocked", "{lock:?}");

    // kill -9 mid-run: the next command takes the lock over and finishes.
    p.write("jobs/web/extra.txt", "changed\n");
    let gates = gated_makefile(p, "web", "restart");
    let server = s.serve();
    let client = post_deploy(server.base.clone());
    wait_for(&gates.path().join("reached"));
    signal_pid(server.pid(), "KILL");
    drop(server);
    let _ = client.join();
    std::fs::write(gates.path().join("go"), "").expect("go");
    let out = p.expect(&["deploy", "--jobs", "web"], 0);
    assert!(out.stdout.contains("took over a stale lock"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(p.path().join("local-workers/a/jobs/web/current/extra.txt"))
            .expect("extra"),
        "changed\n"
    );
}
