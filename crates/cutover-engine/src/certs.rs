//! Certificates for jobs with `[certs]`: a project CA that cutover makes
//! once and keeps in `.cutover/certs/` (beside `secret.key`, not in
//! `state.db`: a lost store must not silently replace the CA), its key
//! encrypted with the project key like the KV secrets; and per allocation `certs/ca.crt`,
//! `certs/<job>.crt` and `certs/<job>.key` (0600), shipped in the release
//! like any file (so they are part of the fingerprint: a new certificate
//! rolls the job out). SANs: the worker's host and name, and `names`.
//!
//! A certificate is kept while its SANs and CA are unchanged and more than
//! a third of its validity remains; then the next deploy issues a new one.

use std::collections::{BTreeMap, BTreeSet};

use cutover_model::{Job, Worker};
use cutover_state::{Secret, SecretKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::{Context, EngineError};

const CA_RECORD: &str = "ca.json";
const CA_VALIDITY_DAYS: i64 = 3650;

fn leaf_record(job: &str, worker: &str) -> String {
    format!("leaf/{job}/{worker}.json")
}

/// `.cutover/certs/`: 0700, each record 0600.
fn dir(ctx: &Context) -> std::path::PathBuf {
    ctx.workspace.join("certs")
}

fn read_record<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    rel: &str,
) -> Result<Option<T>, EngineError> {
    let path = dir(ctx).join(rel);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(format!("reading {}", path.display()))(e)),
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            EngineError::usage(
                format!("{} is damaged: {e}", path.display()),
                "restore it from your backup of .cutover/",
            )
        }),
    }
}

/// Written atomically (a temporary file renamed over the old one).
fn write_record<T: Serialize>(ctx: &Context, rel: &str, value: &T) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = dir(ctx).join(rel);
    let io = |what: &str| EngineError::io(format!("{what} {}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io("creating the dir of"))?;
    }
    let json = serde_json::to_string_pretty(value).map_err(|e| fail("a certificate record", e))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("writing"))?;
    f.write_all(json.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("writing"))?;
    std::fs::rename(&tmp, &path).map_err(io("writing"))
}

/// Whether any allocation certificate is kept (signed by the CA).
fn any_leaf(ctx: &Context) -> bool {
    walkdir::WalkDir::new(dir(ctx).join("leaf"))
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.file_type().is_file())
}

/// How certificates are found for a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A deploy: issue (and keep) what is missing or due for renewal.
    Issue,
    /// A dry run: what a deploy would ship, keeping nothing (a certificate
    /// due is made, and dropped).
    Preview,
    /// What the workers should hold now (drift, rebuilds): the kept
    /// certificates, renewal or not.
    Existing,
}

/// (job, worker) -> the files to add to the allocation's tree.
pub(crate) type Files = BTreeMap<(String, String), Vec<(String, Vec<u8>, u32)>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    /// The key PEM, encrypted with the project key, hex.
    key: String,
    not_after: i64,
}

/// One allocation's certificate as kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLeaf {
    pub cert_pem: String,
    key: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// blake3 of the CA certificate that signed it.
    ca: String,
}

/// What `cutover certs list` shows of one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub job: String,
    /// `(ca)` for the project CA.
    pub worker: String,
    pub sans: Vec<String>,
    pub not_after: String,
    pub days_left: i64,
    /// Due for renewal at the next deploy.
    pub renew: bool,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn fail(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The project key, made only when nothing is encrypted with a lost one.
async fn project_key(ctx: &Context, create: bool) -> Result<Option<SecretKey>, EngineError> {
    let path = ctx.workspace.join("secret.key");
    if let Some(k) = SecretKey::load(&path)? {
        return Ok(Some(k));
    }
    let has_ca = dir(ctx).join(CA_RECORD).exists();
    let has_secret = ctx.store.kv_list(None).await?.iter().any(|r| r.secret);
    if has_ca || has_secret {
        return Err(EngineError::usage(
            format!(
                "{} is missing, and the store holds {} encrypted with it",
                path.display(),
                if has_ca { "the project CA's key" } else { "secrets" }
            ),
            format!(
                "restore the key file from your backup to {} (32 bytes, mode 0600); cutover does not make a new key over encrypted data",
                path.display()
            ),
        ));
    }
    Ok(if create {
        Some(SecretKey::create(&path)?)
    } else {
        None
    })
}

fn ca_params(project: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("cutover CA of {project}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn at(unix: i64) -> Result<time::OffsetDateTime, EngineError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| fail("a certificate date", e))
}

/// The CA: its certificate, and an issuer to sign with.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(project: &str) -> Result<(Ca, StoredCaPlain), EngineError> {
    let key = KeyPair::generate().map_err(|e| fail("making the CA key", e))?;
    let mut params = ca_params(project);
    let start = now();
    params.not_before = at(start - 300)?;
    params.not_after = at(start + CA_VALIDITY_DAYS * 86_400)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| fail("making the CA certificate", e))?;
    let plain = StoredCaPlain {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: start + CA_VALIDITY_DAYS * 86_400,
    };
    let ca = Ca {
        cert_pem: plain.cert_pem.clone(),
        issuer: Issuer::new(ca_params(project), key),
    };
    Ok((ca, plain))
}

struct StoredCaPlain {
    cert_pem: String,
    key_pem: String,
    not_after: i64,
}

/// The project CA from the store; made (and, when `persist`, kept) if
/// there is none.
async fn ca(ctx: &Context, persist: bool) -> Result<Ca, EngineError> {
    let project = &ctx.project.config.name;
    let stored: Option<StoredCa> = read_record(ctx, CA_RECORD)?;
    if stored.is_none() && any_leaf(ctx) {
        return Err(EngineError::usage(
            format!(
                "{} is missing, but certificates it signed are kept in {}",
                dir(ctx).join(CA_RECORD).display(),
                dir(ctx).join("leaf").display()
            ),
            "restore .cutover/certs/ca.json from your backup; to start over with a new CA (every job with [certs] then rolls out), remove .cutover/certs/",
        ));
    }
    if let Some(s) = stored {
        let key = project_key(ctx, false)
            .await?
            .ok_or_else(|| fail("the project CA", "no project key"))?;
        let pem = unhex(&s.key)
            .ok_or_else(|| fail("the project CA", "its stored key is damaged"))
            .and_then(|data| {
                key.decrypt(&data).map_err(|e| {
                    EngineError::usage(
                        format!("cannot decrypt the project CA's key: {e}"),
                        "restore the .cutover/secret.key it was made with",
                    )
                })
            })?;
        let pair = KeyPair::from_pem(pem.expose()).map_err(|e| fail("the project CA key", e))?;
        return Ok(Ca {
            cert_pem: s.cert_pem,
            issuer: Issuer::new(ca_params(project), pair),
        });
    }
    let (ca, plain) = new_ca(project)?;
    if persist {
        let key = project_key(ctx, true)
            .await?
            .ok_or_else(|| fail("the project CA", "no project key"))?;
        let stored = StoredCa {
            cert_pem: plain.cert_pem,
            key: hex(&key.encrypt(&Secret::new(plain.key_pem))),
            not_after: plain.not_after,
        };
        write_record(ctx, CA_RECORD, &stored)?;
    }
    Ok(ca)
}

/// The SANs of an allocation's certificate.
fn sans(worker: &Worker, names: &[String]) -> Vec<String> {
    let mut out = vec![worker.host.clone(), worker.name.clone()];
    // A worker name may hold `_`, which no DNS name does: such a name is
    // left out rather than making a certificate strict clients refuse.
    out.retain(|n| cutover_model::project::san_name(n).is_ok());
    out.extend(names.iter().cloned());
    let mut seen = BTreeSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

fn issue(
    ca: &Ca,
    job: &Job,
    worker: &Worker,
    sans: &[String],
    validity: std::time::Duration,
) -> Result<(StoredLeaf, String), EngineError> {
    let key = KeyPair::generate().map_err(|e| fail("making a certificate key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{}@{}", job.name, worker.name));
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| fail(&format!("the name `{s}`"), e)),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let start = now();
    let secs = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2);
    params.not_before = at(start - 300)?;
    params.not_after = at(start + secs)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| fail("signing a certificate", e))?;
    let leaf = StoredLeaf {
        cert_pem: cert.pem(),
        key: String::new(),
        sans: sans.to_vec(),
        not_before: start,
        not_after: start + secs,
        ca: blake3::hash(ca.cert_pem.as_bytes()).to_hex().to_string(),
    };
    Ok((leaf, key.serialize_pem()))
}

/// Due for a new certificate: under a third of its validity left.
fn due(leaf: &StoredLeaf, at: i64) -> bool {
    let validity = leaf.not_after - leaf.not_before;
    leaf.not_after - at < validity / 3
}

/// The certificate files of every allocation in `scope` whose job has
/// `[certs]`.
pub(crate) async fn for_render(
    ctx: &Context,
    scope: Option<&BTreeSet<String>>,
    mode: Mode,
) -> Result<Files, EngineError> {
    let jobs: Vec<&Job> = ctx
        .project
        .jobs
        .values()
        .filter(|j| j.manifest.certs.is_some() && scope.is_none_or(|s| s.contains(&j.name)))
        .collect();
    let mut out = Files::new();
    if jobs.is_empty() {
        return Ok(out);
    }
    let ca = ca(ctx, mode == Mode::Issue).await?;
    let ca_hash = blake3::hash(ca.cert_pem.as_bytes()).to_hex().to_string();
    let key = project_key(ctx, mode == Mode::Issue).await?;
    let t = now();
    for job in jobs {
        let Some(spec) = &job.manifest.certs else {
            continue;
        };
        for w in ctx.project.workers_for(job) {
            let want = sans(w, &spec.names);
            let record = leaf_record(&job.name, &w.name);
            let stored: Option<StoredLeaf> = read_record(ctx, &record)?;
            let validity = i64::try_from(spec.validity.as_secs()).unwrap_or(i64::MAX / 2);
            let keep = stored.as_ref().is_some_and(|l| {
                mode == Mode::Existing
                    || (l.sans == want
                        && l.ca == ca_hash
                        && l.not_after - l.not_before == validity
                        && !due(l, t))
            });
            let (leaf, key_pem) = match (stored, &key) {
                (Some(l), Some(k)) if keep => {
                    let pem = unhex(&l.key)
                        .and_then(|d| k.decrypt(&d).ok())
                        .ok_or_else(|| {
                            EngineError::usage(
                                format!(
                                    "cannot decrypt the certificate key of {}@{}",
                                    job.name, w.name
                                ),
                                "restore the .cutover/secret.key it was made with",
                            )
                        })?;
                    (l, pem.expose().to_string())
                }
                _ => {
                    let (mut leaf, pem) = issue(&ca, job, w, &want, spec.validity)?;
                    if mode == Mode::Issue {
                        let k = key
                            .as_ref()
                            .ok_or_else(|| fail("certificates", "no project key"))?;
                        leaf.key = hex(&k.encrypt(&Secret::new(pem.clone())));
                        write_record(ctx, &record, &leaf)?;
                    }
                    (leaf, pem)
                }
            };
            out.insert(
                (job.name.clone(), w.name.clone()),
                vec![
                    (
                        "certs/ca.crt".into(),
                        ca.cert_pem.clone().into_bytes(),
                        0o644,
                    ),
                    (
                        format!("certs/{}.crt", job.name),
                        leaf.cert_pem.into_bytes(),
                        0o644,
                    ),
                    (
                        format!("certs/{}.key", job.name),
                        key_pem.into_bytes(),
                        0o600,
                    ),
                ],
            );
        }
    }
    Ok(out)
}

/// Every certificate the store keeps, with its expiry.
pub async fn list(ctx: &Context) -> Result<Vec<CertInfo>, EngineError> {
    let t = now();
    let date = |unix: i64| {
        jiff::Timestamp::from_second(unix)
            .map(|ts| ts.to_string())
            .unwrap_or_else(|_| unix.to_string())
    };
    let mut out = Vec::new();
    if let Some(ca) = read_record::<StoredCa>(ctx, CA_RECORD)? {
        out.push(CertInfo {
            job: "-".into(),
            worker: "(ca)".into(),
            sans: Vec::new(),
            not_after: date(ca.not_after),
            days_left: (ca.not_after - t) / 86_400,
            renew: false,
        });
    }
    for job in ctx
        .project
        .jobs
        .values()
        .filter(|j| j.manifest.certs.is_some())
    {
        for w in ctx.project.workers_for(job) {
            let Some(leaf) = read_record::<StoredLeaf>(ctx, &leaf_record(&job.name, &w.name))?
            else {
                continue;
            };
            out.push(CertInfo {
                job: job.name.clone(),
                worker: w.name.clone(),
                renew: due(&leaf, t),
                days_left: (leaf.not_after - t) / 86_400,
                not_after: date(leaf.not_after),
                sans: leaf.sans,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_under_a_third_of_the_validity() {
        let leaf = |nb, na| StoredLeaf {
            cert_pem: String::new(),
            key: String::new(),
            sans: Vec::new(),
            not_before: nb,
            not_after: na,
            ca: String::new(),
        };
        assert!(!due(&leaf(0, 90), 59));
        assert!(due(&leaf(0, 90), 61));
    }

    #[test]
    fn hex_round_trips() {
        let data = [0u8, 1, 127, 128, 255];
        assert_eq!(unhex(&hex(&data)).as_deref(), Some(&data[..]));
        assert_eq!(unhex("zz"), None);
    }
}
