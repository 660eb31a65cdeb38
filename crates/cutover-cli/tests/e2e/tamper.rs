//! The tamper suite: each attack on a signed release index (the TUF
//! specification's, and the advisories of its libraries) is written into a
//! real file store, signed as the attacker could, and `cutover deploy`
//! must refuse it with exit 4 before any worker is touched.

use std::path::{Path, PathBuf};

use cutover_index::{sign, Index, SignatureEntry, Signed};
use ed25519_dalek::SigningKey;

use crate::support::*;

struct Target {
    p: Project,
    store: PathBuf,
    key: SigningKey,
    good: Signed,
    seq: std::cell::Cell<u64>,
}

fn signing_key(path: &Path) -> SigningKey {
    let text = std::fs::read_to_string(path).expect("key");
    let hex = text.lines().nth(1).expect("seed line");
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    SigningKey::from_bytes(&seed.try_into().expect("32 bytes"))
}

impl Target {
    fn index_path(&self) -> PathBuf {
        self.store.join("api/releases.json")
    }

    fn write(&self, index: &Index) {
        std::fs::write(
            self.index_path(),
            serde_json::to_vec_pretty(index).expect("json"),
        )
        .expect("write index");
    }

    /// The legitimate index again, with a seq above everything so far.
    fn restore(&self) {
        self.seq.set(self.seq.get() + 10);
        let mut s = self.good.clone();
        s.seq = self.seq.get();
        self.write(&sign(s, std::slice::from_ref(&self.key)));
        self.p.expect(&["deploy"], 0);
    }

    /// The next attack's content: the good index with a higher seq.
    fn attack(&self) -> Signed {
        let mut s = self.good.clone();
        s.seq = self.seq.get() + 5;
        s
    }

    /// Deploys against what is in the store: refused with exit 4 and
    /// `why`, and no worker touched.
    #[track_caller]
    fn refused(&self, what: &str, why: &str) {
        let workers = self.p.path().join("local-workers");
        // A worker's `.fence` (PostgreSQL: the lock's token, written at a
        // run's first contact, a read included) is not the worker's state.
        let state = || {
            let mut s = snapshot(&workers);
            s.retain(|(path, _, _)| !path.ends_with("/.fence"));
            s
        };
        let before = state();
        let out = self.p.expect(&["deploy", "--force"], 4);
        assert!(out.stderr.contains(why), "{what}: {out:?}");
        assert_eq!(state(), before, "{what}: a worker was touched");
    }

    /// Writes an artifact (any bytes) and a signed index that points
    /// stable at it under `version`.
    fn artifact(&self, version: &str, bytes: &[u8], size: Option<u64>) {
        let sha = cutover_index::sha256_hex(bytes);
        std::fs::write(
            self.store.join(format!("api/{version}.{sha}.tar.zst")),
            bytes,
        )
        .expect("artifact");
        let mut s = self.attack();
        let mut v = s.versions[0].clone();
        v.version = version.into();
        v.sha256 = sha;
        v.size = size.unwrap_or(bytes.len() as u64);
        s.versions.push(v);
        s.channels.insert("stable".into(), version.into());
        self.write(&sign(s, std::slice::from_ref(&self.key)));
    }
}

fn target() -> Target {
    let p = Project::new();
    let keys = p.tmp.path().join("keys");
    let store = p.tmp.path().join("store");
    p.check_tmp.set(false);
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\"]\n",
            store.display(),
            keys.join("cutover-signing.pub").display()
        ),
    );
    p.write("workers.toml", TWO_LOCAL_WORKERS);
    p.job("api", "version = \"1.0.0\"\n[build]\ncommand = \"true\"\n");
    p.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key_file = keys.join("cutover-signing.key");
    p.expect(
        &["publish", "api", "--key", key_file.to_str().expect("utf8")],
        0,
    );
    p.expect(&["deploy"], 0);
    let good: Index =
        serde_json::from_slice(&std::fs::read(store.join("api/releases.json")).expect("index"))
            .expect("json");
    Target {
        key: signing_key(&key_file),
        seq: std::cell::Cell::new(good.signed.seq),
        good: good.signed,
        p,
        store,
    }
}

/// A tar.zst whose entries have raw names and, for symlinks, raw
/// targets: what an attacker writes, bypassing any builder's checks.
fn evil_tar(name: &str, link: Option<&str>) -> Vec<u8> {
    evil_tar_of(&[(name, link)])
}

fn evil_tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, link) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_mode(0o644);
        h.set_mtime(0);
        let data: &[u8] = if link.is_some() { b"" } else { b"pwned\n" };
        h.set_entry_type(if link.is_some() {
            tar::EntryType::Symlink
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    // The job's Makefile too, so that only the evil entry is wrong.
    let mut m = tar::Header::new_gnu();
    m.set_mode(0o644);
    m.set_size(MAKEFILE.len() as u64);
    m.set_cksum();
    b.append_data(&mut m, "Makefile", MAKEFILE.as_bytes())
        .expect("append");
    zstd::bulk::compress(&b.into_inner().expect("tar"), 3).expect("zstd")
}

#[test]
fn every_attack_on_the_index_is_refused_before_any_worker_is_touched() {
    let t = target();

    // An untrusted key.
    let stranger = SigningKey::from_bytes(&[9; 32]);
    t.write(&sign(t.attack(), &[stranger]));
    t.refused(
        "untrusted key",
        "0 distinct trusted key(s) signed it; 1 must",
    );
    t.restore();

    // A changed field under a valid signature.
    let mut index = sign(t.attack(), std::slice::from_ref(&t.key));
    index
        .signed
        .channels
        .insert("canary".into(), "1.0.0".into());
    t.write(&index);
    t.refused("changed field", "0 distinct trusted key(s) signed it");
    t.restore();

    // Another job's index, validly signed.
    let mut s = t.attack();
    s.job = "web".into();
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("another job's index", "is job `web`'s, not `api`'s");
    t.restore();

    // An expired index, validly signed (a freeze attack).
    let mut s = t.attack();
    s.expires = "2020-01-01T00:00:00Z".into();
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("expired", "the index expired at 2020-01-01T00:00:00Z");
    t.restore();

    // An older index, validly signed (a rollback attack).
    let mut s = t.good.clone();
    s.seq = 1;
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("rollback", "lower than");
    t.restore();

    // An unknown schema.
    let mut s = t.attack();
    s.schema_version = 2;
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("schema", "unknown schema_version 2");
    t.restore();

    // Endless data: over 1 MiB, or more than 32 signatures.
    let mut s = t.attack();
    s.versions[0].reason = "x".repeat(1024 * 1024);
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("over 1 MiB", "over the 1 MiB limit");
    t.restore();
    let mut index = sign(t.attack(), std::slice::from_ref(&t.key));
    let one = index.signatures[0].clone();
    index.signatures = vec![one; 33];
    t.write(&index);
    t.refused("33 signatures", "over the limit of 32");
    t.restore();

    // A version name that escapes its directory.
    let mut s = t.attack();
    s.versions[0].version = "../../../etc/passwd".into();
    s.channels
        .insert("stable".into(), "../../../etc/passwd".into());
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    t.refused("version name", "could escape its directory");
    t.restore();

    // An artifact whose bytes differ from what the index records (the
    // local cache is not what is checked: it is gone).
    let good_artifact = std::fs::read_dir(t.store.join("api"))
        .expect("store")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .expect("artifact");
    let bytes = std::fs::read(&good_artifact).expect("artifact");
    t.artifact("2.0.0", &bytes, Some(bytes.len() as u64 - 1));
    let _ = std::fs::remove_dir_all(t.p.path().join(".cutover/cache"));
    t.refused("longer artifact", "bytes or more, not the");
    t.restore();
    t.artifact("2.0.1", &bytes, None);
    let sha = cutover_index::sha256_hex(&bytes);
    let mut swapped = bytes.clone();
    let last = swapped.len() - 1;
    swapped[last] ^= 1;
    std::fs::write(t.store.join(format!("api/2.0.1.{sha}.tar.zst")), &swapped).expect("swap");
    let _ = std::fs::remove_dir_all(t.p.path().join(".cutover/cache"));
    t.refused("swapped artifact", "has sha256");
    t.restore();

    // Artifacts (validly signed, checksums right) whose entries would
    // escape the release dir when unpacked.
    t.artifact("3.0.0", &evil_tar("../../escape.txt", None), None);
    t.refused("entry with ..", "would escape its directory");
    assert!(!t.p.tmp.path().join("escape.txt").exists());
    t.restore();
    t.artifact(
        "3.0.1",
        &evil_tar("/tmp/cutover-tamper-abs.txt", None),
        None,
    );
    t.refused("absolute entry", "would escape its directory");
    assert!(!Path::new("/tmp/cutover-tamper-abs.txt").exists());
    t.restore();
    t.artifact("3.0.2", &evil_tar("link", Some("../../../../etc")), None);
    t.refused("symlink outside", "points outside it");
    t.restore();
    t.artifact("3.0.3", &evil_tar("link", Some("/etc")), None);
    t.refused("absolute symlink", "points outside it");
    t.restore();
    // Inside by name, outside for real: `a -> .` makes a/a/a/a the root.
    t.artifact(
        "3.0.4",
        &evil_tar_of(&[
            ("a", Some(".")),
            ("c", Some("a/a/a/a/../../../../etc/shadow")),
        ]),
        None,
    );
    t.refused("symlink chain", "points through another symlink");
    t.restore();

    // An expired index is not re-signed by a publish either: it may be an
    // old one replayed.
    let mut s = t.attack();
    s.expires = "2020-01-01T00:00:00Z".into();
    t.write(&sign(s, std::slice::from_ref(&t.key)));
    let key_file = t.p.tmp.path().join("keys/cutover-signing.key");
    let out = t.p.expect(
        &["publish", "api", "--key", key_file.to_str().expect("utf8")],
        4,
    );
    assert!(out.stderr.contains("--allow-expired"), "{out:?}");
    t.restore();

    // The index deleted and this machine's state lost (a fresh runner): a
    // job whose job.toml has [build] is still refused, never deployed from
    // the working tree.
    std::fs::remove_file(t.index_path()).expect("delete index");
    t.p.lose_store();
    t.refused("deleted index, fresh state", "releases.json is missing");
    t.restore();

    // One key counts once, whatever its signatures and key ids claim.
    let second = t.p.tmp.path().join("keys2");
    t.p.expect(
        &["keys", "generate", "--out", second.to_str().expect("utf8")],
        0,
    );
    t.p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\", \"{}\"]\nthreshold = 2\n",
            t.store.display(),
            t.p.tmp.path().join("keys/cutover-signing.pub").display(),
            second.join("cutover-signing.pub").display()
        ),
    );
    let mut index = sign(t.attack(), std::slice::from_ref(&t.key));
    let other_id =
        cutover_index::keyid(&signing_key(&second.join("cutover-signing.key")).verifying_key());
    let dup = SignatureEntry {
        keyid: other_id,
        sig: index.signatures[0].sig.clone(),
    };
    index.signatures.push(dup);
    index.signatures.push(index.signatures[0].clone());
    t.write(&index);
    t.refused(
        "duplicate signatures",
        "1 distinct trusted key(s) signed it; 2 must",
    );
}
