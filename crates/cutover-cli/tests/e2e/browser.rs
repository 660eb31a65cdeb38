//! The admin UI in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Sign in, read the overview, set a canary,
//! promote it and roll back with reasons, refresh after a manifest change,
//! watch a CLI deploy live, sign out. A screenshot of the overview goes to
//! the test output.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::serve::{site, TOKEN_ANA};
use crate::support::*;

/// A chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromedriver is missing: scripts/test.sh installs chromium and chromium-driver");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        port,
        _profile: tempfile::tempdir().expect("profile"),
    }
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", d._profile.path().display()),
            ],
        }),
    );
    // chromedriver accepts connections before it serves sessions, and a
    // busy machine has seen it reset the first one: try a few times.
    let url = format!("http://127.0.0.1:{}", d.port);
    let mut attempt = 1;
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) if attempt < 4 => {
                eprintln!("starting a Chromium session (attempt {attempt}): {e}");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("a Chromium session: {e}"),
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    // Waits for it: a click that submits a form returns before the next
    // page has loaded.
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Clicks the element `css` names.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// Types `text` into the field `css` names.
async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
}

/// Clicks the button `css` names, which submits a form, and waits for the
/// page it leads to (a click returns before it loads: a navigation started
/// at once would cancel the submission).
async fn submit(c: &Client, css: &str) {
    let page = c.find(Locator::Css("html")).await.expect("page");
    click(c, css).await;
    left(c, page).await;
}

/// Waits until the page `page` belongs to is gone.
async fn left(c: &Client, page: fantoccini::elements::Element) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while page.tag_name().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the form's page never loaded: {:?}",
            c.current_url().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reloads the job page until no action started from it still runs (the
/// next one would find the project lock held).
async fn until_idle(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = c.find(Locator::Css("#actions li.running")).await.is_ok();
        if !running && c.find(Locator::Css("#actions")).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "an action still runs: {}",
            text(c, "#actions").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.refresh().await.expect("reload");
    }
}

/// Reloads the page until `css` shows `want` (up to 30 s).
async fn until_shows(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if now.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {want:?}; it shows {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.refresh().await.expect("reload");
    }
}

/// Submits the job page's `op` form with `version` and `reason`.
async fn change(c: &Client, op: &str, version: &str, reason: &str) {
    let form = c
        .find(Locator::Css(&format!("#form-{op}")))
        .await
        .expect("form");
    form.find(Locator::Css("select[name=version]"))
        .await
        .expect("select")
        .select_by_value(version)
        .await
        .expect("version");
    form.find(Locator::Css("input[name=reason]"))
        .await
        .expect("reason")
        .send_keys(reason)
        .await
        .expect("type");
    let page = c.find(Locator::Css("html")).await.expect("page");
    form.find(Locator::Css("button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    left(c, page).await;
}

#[test]
fn an_operator_runs_the_fleet_from_the_browser() {
    let s = site(None);
    let p = &s.p;
    s.publish("1.0.0", "stable");
    p.expect(&["deploy"], 0);
    s.publish("1.1.0", "canary");
    let server = s.serve();
    let base = server.base.clone();
    let d = driver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = browser(&d).await;

        // Sign in: the overview sends to the form; a wrong token is refused.
        c.goto(&format!("{base}/_admin")).await.expect("goto");
        assert!(c
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/_admin/login"));
        type_into(&c, "#token", "wrong").await;
        submit(&c, "#sign-in").await;
        assert!(text(&c, "#error").await.contains("not a token"));
        type_into(&c, "#token", TOKEN_ANA).await;
        submit(&c, "#sign-in").await;
        assert_eq!(text(&c, "#actor").await, "ana");

        // The overview: jobs × channels × versions, workers and what they run.
        let jobs = text(&c, "#jobs").await;
        assert!(
            jobs.contains("stable → 1.0.0") && jobs.contains("canary → 1.1.0"),
            "{jobs}"
        );
        assert!(jobs.contains("1.0.0, 1.1.0"), "{jobs}");
        assert!(
            jobs.contains("promoted") && jobs.contains("healthy"),
            "{jobs}"
        );
        let shot = c.screenshot().await.expect("screenshot");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-overview.png");
        std::fs::write(&out, &shot).expect("save screenshot");
        println!("screenshot of the overview: {}", out.display());
        assert!(shot.starts_with(b"\x89PNG"), "a PNG");

        // Canary 1.1.0 with a reason: the canary worker runs it.
        c.goto(&format!("{base}/_admin/jobs/api"))
            .await
            .expect("goto");
        change(&c, "canary", "1.1.0", "try it on one").await;
        until_shows(&c, "#actions", "success (exit 0)").await;
        until_idle(&c).await;
        assert!(text(&c, "#channels").await.contains("canary → 1.1.0"));
        assert_eq!(
            std::fs::read_to_string(
                p.path()
                    .join("local-workers/a/jobs/api/current/version.txt")
            )
            .expect("a")
            .trim(),
            "1.1.0"
        );

        // Promote it: stable moves, the audit entry names ana and the reason.
        change(&c, "promote", "1.1.0", "soaked well").await;
        until_shows(&c, "#channels", "stable → 1.1.0").await;
        until_shows(&c, "#history", "soaked well").await;
        let history = text(&c, "#history").await;
        assert!(
            history.contains("user=ana") && history.contains("channel promote api --version 1.1.0"),
            "{history}"
        );
        until_shows(&c, "#allocations", "1.1.0").await;
        until_idle(&c).await;

        // Roll back to 1.0.0: every worker runs it again.
        change(&c, "rollback", "1.0.0", "bad numbers").await;
        until_shows(&c, "#channels", "stable → 1.0.0").await;
        wait_until(|| {
            ["a", "b"].iter().all(|w| {
                std::fs::read_to_string(
                    p.path()
                        .join(format!("local-workers/{w}/jobs/api/current/version.txt")),
                )
                .is_ok_and(|v| v.trim() == "1.0.0")
            })
        });
        until_idle(&c).await;
        c.goto(&format!("{base}/_admin/audit")).await.expect("goto");
        assert!(text(&c, "#audit").await.contains("bad numbers"));

        // A manifest change shows after Refresh, not before.
        p.job("web", "version = \"1\"\n");
        let gates = gated_makefile(p, "web", "start");
        c.goto(&format!("{base}/_admin")).await.expect("goto");
        assert!(!text(&c, "#jobs").await.contains("web"));
        submit(&c, "#refresh").await;
        until_shows(&c, "#jobs", "web").await;

        // A deploy started from the CLI, watched live in the page (once
        // the page's feed follows).
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.find(Locator::Css("#feed[data-live=on]")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the page's live feed never connected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deploy = p.spawn(&["deploy", "--jobs", "web"]);
        wait_for(&gates.path().join("reached"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !text(&c, "#feed").await.contains("web@a: start") {
            assert!(
                Instant::now() < deadline,
                "the feed never showed web@a's start: {}",
                text(&c, "#feed").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::write(gates.path().join("go"), "").expect("go");
        let out = finish(deploy);
        assert_eq!(out.code, 0, "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !text(&c, "#feed").await.contains("[deploy] web: succeeded") {
            assert!(
                Instant::now() < deadline,
                "the feed never showed the end: {}",
                text(&c, "#feed").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let feed = text(&c, "#feed").await;
        assert!(
            feed.contains("tester started: cutover deploy --jobs web"),
            "{feed}"
        );

        // Sign out: the session is gone.
        submit(&c, "#sign-out").await;
        c.goto(&format!("{base}/_admin")).await.expect("goto");
        assert!(c
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/_admin/login"));
        c.close().await.expect("close");
    });
    assert_eq!(server.stop(), 0);
}
