//! A `cutover serve` as the store (`[store] url = "http(s)://host:port"`):
//! its `/store/` routes hold the same layout as any store. An index update
//! is a PUT with `If-Match` on the ETag read (`If-None-Match: *` for a
//! first index); the server answers 412 when another update came first.
//!
//! Writes send the admin token (`CUTOVER_ADMIN_TOKEN` or `_FILE`); reads
//! send `CUTOVER_STORE_READ_TOKEN`, else nothing, and the admin token only
//! when the store answers 401 without it. No token is ever sent over plain
//! HTTP to an address off this machine, and no redirect is followed.

use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::BTreeMap;
use std::time::Duration;

use cutover_index::Version;

use super::{artifact_name, Fetched, ReleaseStore, Swap, Tag};
use crate::app::env;
use crate::EngineError;

const TIMEOUT: Duration = Duration::from_secs(60);

pub struct HttpStore {
    url: String,
    /// `<url>/store`.
    base: String,
    client: reqwest::Client,
    admin_token: Option<String>,
    read_token: Option<String>,
    /// A read needed the admin token: the store is private.
    private: AtomicBool,
}

impl HttpStore {
    pub fn open(url: &str, vars: &BTreeMap<String, String>) -> Result<HttpStore, EngineError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            EngineError::usage(
                format!("store url `{url}` is not a URL: {e}"),
                "write http(s)://host:port, the address of a `cutover serve`",
            )
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(EngineError::usage(
                format!("store url `{url}` carries credentials"),
                "remove them: the client sends CUTOVER_ADMIN_TOKEN (writes) or CUTOVER_STORE_READ_TOKEN (reads) from the environment",
            ));
        }
        let var = |n: &str| {
            vars.get(n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let admin_token = match (
            var(env::CUTOVER_ADMIN_TOKEN),
            var(env::CUTOVER_ADMIN_TOKEN_FILE),
        ) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(read_private(&path)?),
            (None, None) => None,
        };
        let read_token = var(env::CUTOVER_STORE_READ_TOKEN);
        let host = parsed.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if parsed.scheme() == "http" && !loopback && (admin_token.is_some() || read_token.is_some())
        {
            return Err(EngineError::usage(
                format!("store url `{url}` is plain HTTP to another machine: a token would cross the network in the clear"),
                "serve the store with --tls-cert/--tls-key and use https://",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            // A redirect could carry a token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EngineError::Failed(format!("cannot start an HTTP client: {e}")))?;
        Ok(HttpStore {
            url: url.trim_end_matches('/').to_string(),
            base: format!("{}/store", url.trim_end_matches('/')),
            client,
            admin_token,
            read_token,
            private: AtomicBool::new(false),
        })
    }

    fn file_url(&self, job: &str, file: &str) -> Result<String, EngineError> {
        if !cutover_index::safe_name(job) {
            return Err(EngineError::Refused(format!(
                "job name `{job}` could escape the store"
            )));
        }
        Ok(format!("{}/{job}/{file}", self.base))
    }

    fn read(&self, url: &str, admin: bool) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        let token = if admin {
            self.admin_token.as_ref()
        } else {
            self.read_token.as_ref()
        };
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn write(&self, url: &str) -> Result<reqwest::RequestBuilder, EngineError> {
        let token = self.admin_token.as_ref().ok_or_else(|| {
            EngineError::usage(
                format!("writing to {} needs the admin token", self.url),
                "set CUTOVER_ADMIN_TOKEN (or CUTOVER_ADMIN_TOKEN_FILE) to a token of that `cutover serve`",
            )
        })?;
        Ok(self.client.put(url).bearer_auth(token))
    }

    /// A request that got no answer: what it was, and every cause
    /// (connection refused, timed out, ...).
    fn failed(&self, what: &str, e: reqwest::Error) -> EngineError {
        let mut text = format!("{what}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        EngineError::Failed(format!(
            "{text} (is the `cutover serve` at {} running and reachable?)",
            self.url
        ))
    }

    /// A refusal by the server, said with what to do.
    fn refused(&self, what: &str, status: reqwest::StatusCode) -> EngineError {
        match status.as_u16() {
            401 | 403 => EngineError::usage(
                format!("{} refused {what}: {status}", self.url),
                "check CUTOVER_ADMIN_TOKEN (writes) or CUTOVER_STORE_READ_TOKEN (reads): the server knows no such token",
            ),
            _ => EngineError::Failed(format!("{} answered {what} with {status}", self.url)),
        }
    }

    /// GETs `url`: `None` on 404; at most `limit` bytes.
    async fn get_limited(
        &self,
        url: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, EngineError> {
        let what = format!("reading {url}");
        let admin = self.private.load(Ordering::Relaxed) && self.read_token.is_none();
        let mut resp = self
            .read(url, admin)
            .send()
            .await
            .map_err(|e| self.failed(&what, e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            && !admin
            && self.read_token.is_none()
            && self.admin_token.is_some()
        {
            // A private store, and no read token: the admin token reads too.
            self.private.store(true, Ordering::Relaxed);
            resp = self
                .read(url, true)
                .send()
                .await
                .map_err(|e| self.failed(&what, e))?;
        }
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.refused(&what, resp.status()));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.failed(&what, e))? {
            if super::fill(&mut bytes, &chunk, limit) {
                break;
            }
        }
        Ok(Some((bytes, etag)))
    }
}

impl ReleaseStore for HttpStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn read_index(&self, job: &str) -> Result<Option<Fetched>, EngineError> {
        let url = self.file_url(job, "releases.json")?;
        let Some((bytes, tag)) = self
            .get_limited(&url, cutover_index::MAX_BYTES as u64 + 1)
            .await?
        else {
            return Ok(None);
        };
        let tag = tag.filter(|t| !t.is_empty()).ok_or_else(|| {
            EngineError::Failed(format!(
                "{url} came without an ETag: is {} a `cutover serve`?",
                self.url
            ))
        })?;
        Ok(Some(Fetched {
            bytes,
            tag: Tag(tag),
        }))
    }

    async fn write_index(
        &self,
        job: &str,
        bytes: &[u8],
        expected: Option<&Tag>,
    ) -> Result<Swap, EngineError> {
        let url = self.file_url(job, "releases.json")?;
        let req = self.write(&url)?;
        let req = match expected {
            Some(tag) => req.header(reqwest::header::IF_MATCH, &tag.0),
            None => req.header(reqwest::header::IF_NONE_MATCH, "*"),
        };
        let what = format!("writing {url}");
        let resp = req
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(|e| self.failed(&what, e))?;
        match resp.status() {
            s if s.is_success() => Ok(Swap::Written),
            reqwest::StatusCode::PRECONDITION_FAILED => Ok(Swap::Conflict),
            s => Err(self.refused(&what, s)),
        }
    }

    async fn read_artifact(&self, job: &str, version: &Version) -> Result<Vec<u8>, EngineError> {
        let url = self.file_url(job, &artifact_name(version))?;
        self.get_limited(&url, version.size + 1)
            .await?
            .map(|(bytes, _)| bytes)
            .ok_or_else(|| EngineError::Refused(format!("{url} is missing")))
    }

    async fn write_artifact(
        &self,
        job: &str,
        version: &Version,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        let url = self.file_url(job, &artifact_name(version))?;
        let what = format!("writing {url}");
        let resp = self
            .write(&url)?
            .body(bytes.to_vec())
            .send()
            .await
            .map_err(|e| self.failed(&what, e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(&what, resp.status()))
        }
    }

    /// The artifact's own URL when reads are anonymous; with a read token
    /// the workers get the artifact pushed instead (the token stays here).
    async fn fetch_url(
        &self,
        job: &str,
        version: &Version,
        _valid: Duration,
    ) -> Result<Option<String>, EngineError> {
        if self.read_token.is_some() || self.private.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Ok(Some(self.file_url(job, &artifact_name(version))?))
    }
}

/// The token in `CUTOVER_ADMIN_TOKEN_FILE`; refused when other users could
/// read the file.
fn read_private(path: &str) -> Result<String, EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let what = format!("reading CUTOVER_ADMIN_TOKEN_FILE {path}");
    let mode = std::fs::metadata(path)
        .map_err(EngineError::io(what.clone()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(EngineError::usage(
            format!(
                "{path} (CUTOVER_ADMIN_TOKEN_FILE) can be read by other users (mode {:o})",
                mode & 0o777
            ),
            format!("chmod 600 {path}"),
        ));
    }
    Ok(std::fs::read_to_string(path)
        .map_err(EngineError::io(what))?
        .trim()
        .to_string())
}
