//! `/store/<job>/<file>`: the release store over HTTP. GET and HEAD for
//! readers (anonymous, or with the read token), PUT with an admin token.
//! The only paths are a job's `releases.json` and its content-named
//! artifacts `<version>.<sha256>.tar.zst`.
//!
//! Indexes go through the engine's file store, so an HTTP PUT and a local
//! `cutover publish` on the same directory take the same lock: the ETag is
//! the file store's tag (the sha256 of the bytes) and a PUT must name the
//! one it replaces. Artifacts stream in and out (never whole in memory);
//! an upload must hash to the sha256 in its name, and once stored an
//! artifact never changes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cutover_engine::interrupt::Interrupt;
use cutover_engine::relstore::{FileStore, ReleaseStore, Swap, Tag};
use futures::StreamExt;
use sha2::Digest;

use crate::auth::hex;

/// The largest artifact upload (an unpacked artifact is limited to 8 GiB
/// on the way out; a packed one is far smaller).
pub const MAX_UPLOAD: u64 = 4 << 30;

pub struct StoreDir {
    files: FileStore,
}

/// What a request names: a job's index or one of its artifacts.
pub struct Target {
    pub job: String,
    pub file: String,
    /// The sha256 an artifact's name carries; `None` for the index.
    pub sha256: Option<String>,
}

/// Parses the path after `/store/` as sent (still percent-encoded):
/// `<job>/releases.json` or `<job>/<version>.<sha256>.tar.zst`, plain
/// names only. An encoded byte, `..`, a dot-file or a deeper path is
/// refused.
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
    if file == "releases.json" {
        return Some(Target {
            job: job.to_string(),
            file: file.to_string(),
            sha256: None,
        });
    }
    let stem = file.strip_suffix(".tar.zst")?;
    let (version, sha) = stem.rsplit_once('.')?;
    let hex64 = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex64 && !version.is_empty()).then(|| Target {
        job: job.to_string(),
        file: file.to_string(),
        sha256: Some(sha.to_string()),
    })
}

fn status(code: StatusCode, text: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// A refusal of the engine's file store, as HTTP.
fn failed(e: &cutover_engine::EngineError) -> Response {
    match e {
        // A symlink or a non-file where a store file should be: not ours.
        cutover_engine::EngineError::Refused(_) => status(StatusCode::NOT_FOUND, "not found"),
        other => status(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
    }
}

impl StoreDir {
    pub fn new(root: std::path::PathBuf, interrupt: Arc<Interrupt>) -> StoreDir {
        StoreDir {
            files: FileStore::at(root, interrupt),
        }
    }

    pub async fn get(&self, t: &Target, head: bool) -> Response {
        let Some(sha) = &t.sha256 else {
            return match self.files.read_index(&t.job).await {
                Ok(Some(f)) => {
                    let len = f.bytes.len();
                    let body = if head {
                        Body::empty()
                    } else {
                        Body::from(f.bytes)
                    };
                    (
                        StatusCode::OK,
                        [
                            (header::CONTENT_TYPE, "application/json".to_string()),
                            (header::ETAG, quoted(&f.tag.0)),
                            (header::CONTENT_LENGTH, len.to_string()),
                        ],
                        body,
                    )
                        .into_response()
                }
                Ok(None) => status(StatusCode::NOT_FOUND, "not found"),
                Err(e) => failed(&e),
            };
        };
        let dir = match self.files.existing_job_dir(&t.job) {
            Ok(d) => d,
            Err(e) => return failed(&e),
        };
        let path = dir.join(&t.file);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let file = match file {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            // Missing, a symlink (ELOOP) or not a file: nothing to serve.
            _ => return status(StatusCode::NOT_FOUND, "not found"),
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let body = if head {
            Body::empty()
        } else {
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
            Body::from_stream(stream)
        };
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/zstd".to_string()),
                // Named by content: the name's sha256 is the ETag.
                (header::ETAG, quoted(sha)),
                (header::CONTENT_LENGTH, len.to_string()),
            ],
            body,
        )
            .into_response()
    }

    pub async fn put(&self, t: &Target, headers: &HeaderMap, body: Body) -> Response {
        match &t.sha256 {
            None => self.put_index(t, headers, body).await,
            Some(sha) => self.put_artifact(t, sha, body).await,
        }
    }

    /// A compare-and-swap under the file store's lock: `If-Match` names
    /// the ETag replaced, `If-None-Match: *` a first index.
    async fn put_index(&self, t: &Target, headers: &HeaderMap, body: Body) -> Response {
        let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
        let if_none = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        let expected = match (if_match, if_none) {
            (Some(tag), None) => Some(Tag(tag.trim().trim_matches('"').to_string())),
            (None, Some("*")) => None,
            _ => {
                return status(
                    StatusCode::PRECONDITION_FAILED,
                    "an index is replaced only knowing what it replaces: send If-Match with its ETag, or If-None-Match: * for a first index",
                )
            }
        };
        let limit = cutover_engine::index::MAX_BYTES;
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("an index is at most {limit} bytes"),
                )
            }
        };
        // Signatures are every reader's to verify; what is not even an
        // index of this job is refused here, before it can stop them all.
        let of_job = serde_json::from_slice::<cutover_engine::index::Index>(&bytes)
            .is_ok_and(|i| i.signed.job == t.job);
        if !of_job {
            return status(
                StatusCode::BAD_REQUEST,
                &format!("that is not a release index of {}", t.job),
            );
        }
        match self
            .files
            .write_index(&t.job, &bytes, expected.as_ref())
            .await
        {
            Ok(Swap::Written) => (
                StatusCode::CREATED,
                [(header::ETAG, quoted(&hex(&sha2::Sha256::digest(&bytes))))],
            )
                .into_response(),
            Ok(Swap::Conflict) => status(
                StatusCode::PRECONDITION_FAILED,
                "the index changed since it was read: read it again",
            ),
            Err(e) => failed(&e),
        }
    }

    /// Streams the upload to a temporary file in the job's dir; it
    /// becomes the artifact only if it hashes to the name's sha256.
    async fn put_artifact(&self, t: &Target, sha: &str, body: Body) -> Response {
        let dir = match self.files.job_dir_made(&t.job) {
            Ok(d) => d,
            Err(e) => return failed(&e),
        };
        let tmp = match tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".tmp")
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
        let mut size = 0u64;
        let mut hasher = sha2::Sha256::new();
        let mut file = tmp.as_file();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return status(StatusCode::BAD_REQUEST, "the upload broke off");
            };
            size += chunk.len() as u64;
            if size > MAX_UPLOAD {
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("an artifact is at most {MAX_UPLOAD} bytes"),
                );
            }
            hasher.update(&chunk);
            if file.write_all(&chunk).is_err() {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the upload");
            }
        }
        if hex(&hasher.finalize()) != sha {
            return status(
                StatusCode::BAD_REQUEST,
                "the upload's sha256 is not the one its name says",
            );
        }
        let path = dir.join(&t.file);
        match std::fs::symlink_metadata(&path) {
            // Named by content, checked above: the same bytes are there.
            Ok(m) if m.is_file() => {
                return (StatusCode::OK, [(header::ETAG, quoted(sha))]).into_response()
            }
            Ok(_) => return status(StatusCode::CONFLICT, "a non-file holds that name"),
            Err(_) => {}
        }
        let stored = file
            .sync_all()
            .and_then(|()| {
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
            })
            .and_then(|()| tmp.persist_noclobber(&path).map_err(|e| e.error));
        match stored {
            Ok(_) => {
                let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
                (StatusCode::CREATED, [(header::ETAG, quoted(sha))]).into_response()
            }
            // Another upload of the same bytes won the race: fine.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (StatusCode::OK, [(header::ETAG, quoted(sha))]).into_response()
            }
            Err(e) => status(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot store it: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_store_paths_are_targets() {
        let sha = "a".repeat(64);
        assert!(target("web/releases.json").is_some_and(|t| t.sha256.is_none()));
        assert!(target(&format!("web/1.0.0.{sha}.tar.zst"))
            .is_some_and(|t| t.sha256 == Some(sha.clone())));
        for bad in [
            "../etc/passwd",
            "web/../../x.tar.zst",
            "web/%2e%2e/x.tar.zst",
            "web%2Freleases.json",
            "web/sub/releases.json",
            "web/.lock",
            "web/notes.txt",
            "web/1.0.0.abc.tar.zst",
            &format!("web/.{sha}.tar.zst"),
            ".hidden/releases.json",
            "web\\releases.json",
            "/releases.json",
        ] {
            assert!(target(bad).is_none(), "{bad}");
        }
    }
}
