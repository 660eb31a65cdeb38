//! `/store/<job>/<file>`: the release store over HTTP. GET for readers
//! (anonymous, or with the read token), PUT with an admin token. The only
//! paths are a job's `releases.json` and its content-named artifacts; an
//! index PUT is a compare-and-swap on the ETag (the sha256 of the bytes),
//! done under one lock; an artifact, once written, never changes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::auth::{hex, sha256};

/// The largest upload: an artifact (whose unpacked size is limited to
/// 8 GiB on the way out) or an index (1 MiB).
pub const MAX_UPLOAD: u64 = 4 << 30;

pub struct StoreDir {
    pub root: PathBuf,
    /// Index writes, one at a time: the compare and the swap together.
    cas: tokio::sync::Mutex<()>,
}

/// What a request names: a job's index or one of its artifacts.
pub struct Target {
    pub job: String,
    pub file: String,
    pub index: bool,
}

/// Parses the path after `/store/` as sent (still percent-encoded):
/// `<job>/releases.json` or `<job>/<name>.tar.zst`, plain names only. An
/// encoded byte, `..`, a dot-file or a deeper path is refused.
pub fn target(raw: &str) -> Option<Target> {
    if raw.contains('%') || raw.contains('\\') {
        return None;
    }
    let (job, file) = raw.split_once('/')?;
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.len() <= 255
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    };
    if !plain(job) || !plain(file) || !cutover_engine::index::safe_name(job) {
        return None;
    }
    let index = file == "releases.json";
    if !index && !file.ends_with(".tar.zst") {
        return None;
    }
    Some(Target {
        job: job.to_string(),
        file: file.to_string(),
        index,
    })
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex(&sha256(bytes)))
}

fn status(code: StatusCode, text: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

impl StoreDir {
    pub fn new(root: PathBuf) -> StoreDir {
        StoreDir {
            root,
            cas: tokio::sync::Mutex::new(()),
        }
    }

    /// The job's dir; never a symlink.
    fn job_dir(&self, t: &Target) -> std::io::Result<PathBuf> {
        let dir = self.root.join(&t.job);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other("a symlink")),
            _ => Ok(dir),
        }
    }

    pub async fn get(&self, t: &Target, head: bool) -> Response {
        let Ok(dir) = self.job_dir(t) else {
            return status(StatusCode::NOT_FOUND, "not found");
        };
        let path = dir.join(&t.file);
        let read = tokio::task::spawn_blocking(move || read_nofollow(&path)).await;
        match read {
            Ok(Ok(Some(bytes))) => {
                let tag = etag(&bytes);
                let len = bytes.len();
                let body = if head {
                    Body::empty()
                } else {
                    Body::from(bytes)
                };
                (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                        (header::ETAG, tag),
                        (header::CONTENT_LENGTH, len.to_string()),
                    ],
                    body,
                )
                    .into_response()
            }
            Ok(Ok(None)) => status(StatusCode::NOT_FOUND, "not found"),
            _ => status(StatusCode::INTERNAL_SERVER_ERROR, "cannot read it"),
        }
    }

    pub async fn put(&self, t: &Target, headers: &HeaderMap, body: Body) -> Response {
        let limit = if t.index {
            cutover_engine::index::MAX_BYTES as u64
        } else {
            MAX_UPLOAD
        };
        let Ok(dir) = self.job_dir(t) else {
            return status(StatusCode::FORBIDDEN, "the job's dir is a symlink");
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot create the job's dir: {e}"),
            );
        }
        // The body goes to a temporary file first: nothing is replaced
        // until the whole upload arrived within its limit.
        let tmp = match tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&dir)
        {
            Ok(f) => f,
            Err(e) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot stage the upload: {e}"),
                )
            }
        };
        let mut stream = body.into_data_stream();
        let mut file = tmp.as_file();
        let mut size = 0u64;
        let mut hasher = sha2::Sha256::new();
        use sha2::Digest;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return status(StatusCode::BAD_REQUEST, "the upload broke off");
            };
            size += chunk.len() as u64;
            if size > limit {
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("over the limit of {limit} bytes"),
                );
            }
            hasher.update(&chunk);
            if file.write_all(&chunk).is_err() {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the upload");
            }
        }
        if file.sync_all().is_err() {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the upload");
        }
        let new_tag = format!("\"{}\"", hex(&hasher.finalize()));
        let path = dir.join(&t.file);
        let _cas = self.cas.lock().await;
        let now = match read_nofollow(&path) {
            Ok(now) => now,
            Err(_) => return status(StatusCode::CONFLICT, "the target is not a plain file"),
        };
        if t.index {
            let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
            let if_none = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            let holds = match (if_match, if_none, &now) {
                (Some(want), _, Some(cur)) => want == etag(cur) || want == "*",
                (Some(_), _, None) => false,
                (None, Some("*"), cur) => cur.is_none(),
                // An index is only ever replaced knowing what it replaces.
                (None, _, _) => false,
            };
            if !holds {
                return status(
                    StatusCode::PRECONDITION_FAILED,
                    "the index changed since it was read (or the request named no If-Match / If-None-Match: *): read it again",
                );
            }
        } else if let Some(cur) = &now {
            // Named by content: the same bytes again are fine, others never.
            return if etag(cur) == new_tag {
                (StatusCode::OK, [(header::ETAG, new_tag)]).into_response()
            } else {
                status(
                    StatusCode::CONFLICT,
                    "an artifact of that name exists with other bytes; artifacts never change",
                )
            };
        }
        if let Err(e) = tmp.persist(&path) {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot store it: {}", e.error),
            );
        }
        let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
        (StatusCode::CREATED, [(header::ETAG, new_tag)]).into_response()
    }
}

/// A file's bytes, `None` when absent; an error for a symlink or a
/// non-file.
fn read_nofollow(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_store_paths_are_targets() {
        assert!(target("web/releases.json").is_some_and(|t| t.index));
        assert!(target("web/1.0.0.abc.tar.zst").is_some_and(|t| !t.index));
        for bad in [
            "../etc/passwd",
            "web/../../x.tar.zst",
            "web/%2e%2e/x.tar.zst",
            "web%2Freleases.json",
            "web/sub/releases.json",
            "web/.lock",
            "web/notes.txt",
            ".hidden/releases.json",
            "web\\releases.json",
            "/releases.json",
        ] {
            assert!(target(bad).is_none(), "{bad}");
        }
    }
}
