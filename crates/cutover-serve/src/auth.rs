//! Who may do what: admin tokens (kept only as sha256 hashes, compared in
//! constant time), UI sessions with their CSRF token, and the rate limit
//! on failed sign-ins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_engine::app::{env, Environment};
use cutover_engine::EngineError;
use sha2::{Digest, Sha256};

/// How long a UI session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Failed sign-ins one address may make in a window, and the window.
const FAILURES_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// Addresses whose failures are counted at most (beyond, the counts start
/// over: memory stays bounded whatever the clients).
const MAX_COUNTED: usize = 65_536;

pub type Digest32 = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest32 {
    Sha256::digest(bytes).into()
}

/// Equal without telling, by its timing, where two values first differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random token: 32 bytes, hex.
pub fn random_hex() -> String {
    let mut b = [0u8; 32];
    // The OS generator does not fail on Linux once booted; if it ever
    // did, a zero token must not be issued.
    getrandom::fill(&mut b).expect("the OS random generator failed");
    hex(&b)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Digest32> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The admin tokens, by name, as hashes.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    named: Vec<(String, Digest32)>,
}

impl Tokens {
    /// The tokens the environment names, or `None` when it names none.
    pub fn from_env(e: &Environment) -> Result<Option<Tokens>, EngineError> {
        let mut named = Vec::new();
        if e.var(env::CUTOVER_ADMIN_TOKEN).is_some()
            && e.var(env::CUTOVER_ADMIN_TOKEN_FILE).is_some()
        {
            return Err(EngineError::usage(
                "both CUTOVER_ADMIN_TOKEN and CUTOVER_ADMIN_TOKEN_FILE are set",
                "set one of them: they name the same token, `admin`",
            ));
        }
        if let Some(t) = e.var(env::CUTOVER_ADMIN_TOKEN) {
            let token = strong(t, "CUTOVER_ADMIN_TOKEN")?;
            named.push(("admin".to_string(), sha256(token.as_bytes())));
        } else if let Some(path) = e.var(env::CUTOVER_ADMIN_TOKEN_FILE) {
            let text = read_private(Path::new(path), env::CUTOVER_ADMIN_TOKEN_FILE)?;
            let token = strong(&text, &format!("{path} (CUTOVER_ADMIN_TOKEN_FILE)"))?;
            named.push(("admin".to_string(), sha256(token.as_bytes())));
        }
        if let Some(path) = e.var(env::CUTOVER_ADMIN_TOKENS_FILE) {
            let text = read_private(Path::new(path), env::CUTOVER_ADMIN_TOKENS_FILE)?;
            for (name, hash) in parse_tokens_file(path, &text)? {
                if named.iter().any(|(n, h)| *n == name || *h == hash) {
                    return Err(EngineError::usage(
                        format!("{path} names `{name}`, which CUTOVER_ADMIN_TOKEN(_FILE) already is (or holds its token)"),
                        "one token, one name: drop one of the two, or rename the line",
                    ));
                }
                named.push((name, hash));
            }
        }
        Ok((!named.is_empty()).then_some(Tokens { named }))
    }

    /// The name of the token `presented` is, if it is one.
    pub fn name_of(&self, presented: &str) -> Option<String> {
        let h = sha256(presented.as_bytes());
        // Every entry is compared, whichever matches.
        let mut found = None;
        for (name, want) in &self.named {
            if same(&h, want) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// The shortest admin token accepted: shorter ones can be guessed.
const MIN_TOKEN: usize = 16;

/// A token as given, trimmed; refused when blank or short.
fn strong<'a>(token: &'a str, what: &str) -> Result<&'a str, EngineError> {
    let t = token.trim();
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(EngineError::usage(
            format!("{what} holds a space or a line break inside: one token, on one line"),
            "a team names one token per person in CUTOVER_ADMIN_TOKENS_FILE (`name:sha256` lines)",
        ));
    }
    let n = t.chars().count();
    if n < MIN_TOKEN {
        let is = if n == 0 {
            "blank".to_string()
        } else {
            format!("{n} character(s)")
        };
        return Err(EngineError::usage(
            format!("{what} is {is}: an admin token has at least {MIN_TOKEN} characters"),
            "make one with `head -c 32 /dev/urandom | base64`",
        ));
    }
    Ok(t)
}

/// `name:sha256hex` lines; `#` comments and blank lines are skipped. A
/// name or a hash given twice is refused: one token, one actor.
pub fn parse_tokens_file(path: &str, text: &str) -> Result<Vec<(String, Digest32)>, EngineError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(name, h)| {
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
            let h = h.strip_prefix("sha256:").unwrap_or(h);
            ok_name
                .then(|| unhex(&h.to_ascii_lowercase()))
                .flatten()
                .map(|d| (name.to_string(), d))
        });
        match parsed {
            Some(entry) => {
                let earlier = out
                    .iter()
                    .find(|(name, hash)| *name == entry.0 || *hash == entry.1);
                if let Some((name, _)) = earlier {
                    return Err(EngineError::usage(
                        format!(
                            "{path}:{}: `{}` repeats the name or the token of `{name}`",
                            n + 1,
                            entry.0
                        ),
                        "give each person or automation a token (and a name) of its own",
                    ));
                }
                out.push(entry)
            }
            None => {
                return Err(EngineError::usage(
                    format!("{path}:{}: not a `name:sha256` line", n + 1),
                    "each line is a name (letters, digits, . _ - @) and the sha256 of its token in hex: `printf %s TOKEN | sha256sum`",
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(EngineError::usage(
            format!("{path} (CUTOVER_ADMIN_TOKENS_FILE) names no token"),
            "add `name:sha256` lines, or unset the variable",
        ));
    }
    Ok(out)
}

/// A secret file's text; refused when other users could read it.
fn read_private(path: &Path, var: &str) -> Result<String, EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| {
        EngineError::usage(
            format!("{var}: cannot read {}: {e}", path.display()),
            format!("point {var} at a file (mode 0600) holding the token(s)"),
        )
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(std::io::Error::other("not a file")));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(EngineError::usage(
            format!(
                "{} ({var}) can be read by other users (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 600 {}", path.display()),
        ));
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

#[derive(Debug, Clone)]
pub struct Session {
    pub actor: String,
    pub csrf: String,
    expires: Instant,
}

/// The UI's sessions and the sign-in rate limit, in memory: a restart
/// signs everyone out.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Sessions {
    pub fn start(&self, actor: &str) -> (String, Session) {
        let id = random_hex();
        let s = Session {
            actor: actor.to_string(),
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
        };
        if let Ok(mut m) = self.by_id.lock() {
            let now = Instant::now();
            m.retain(|_, s| s.expires > now);
            if m.len() >= MAX_SESSIONS {
                if let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    m.remove(&oldest);
                }
            }
            m.insert(id.clone(), s.clone());
        }
        (id, s)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self.by_id.lock().ok()?;
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut m) = self.by_id.lock() {
            m.remove(id);
        }
    }

    /// Whether `ip` may try to sign in now. A limited address is refused
    /// whatever it sends, a right token included: a guess must not learn
    /// it was right. (Behind a proxy on this machine every client is
    /// 127.0.0.1 and shares one limit.)
    pub fn may_try(&self, ip: IpAddr) -> bool {
        let Ok(f) = self.failures.lock() else {
            return false;
        };
        match f.get(&counted(ip)) {
            Some((n, since)) => *n < FAILURES_PER_WINDOW || since.elapsed() > WINDOW,
            None => true,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        if let Ok(mut f) = self.failures.lock() {
            if f.len() >= MAX_COUNTED {
                f.retain(|_, (_, since)| since.elapsed() <= WINDOW);
                if f.len() >= MAX_COUNTED {
                    f.clear();
                }
            }
            let e = f.entry(counted(ip)).or_insert((0, Instant::now()));
            if e.1.elapsed() > WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }
}

/// The address a failure counts against: an IPv6 client's whole /64 (one
/// host has that many addresses to rotate through).
fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_is_checked_line_by_line() {
        let h = hex(&sha256(b"s3cret"));
        let other = hex(&sha256(b"other")).to_uppercase();
        let ok =
            parse_tokens_file("t", &format!("# ops\nana:{h}\nbob:sha256:{other}\n")).expect("ok");
        assert_eq!(ok.len(), 2);
        let t = Tokens { named: ok };
        assert_eq!(t.name_of("s3cret").as_deref(), Some("ana"));
        assert_eq!(t.name_of("other").as_deref(), Some("bob"));
        assert_eq!(t.name_of("s3cret "), None);
        let e = parse_tokens_file("t", "ana:s3cret\n").expect_err("a raw token is refused");
        assert!(e.to_string().contains("t:1"), "{e}");
        assert!(parse_tokens_file("t", "a b:00\n").is_err());
        let dup = parse_tokens_file("t", &format!("ana:{h}\nbob:{h}\n"))
            .expect_err("one token, one actor");
        assert!(dup.to_string().contains("t:2"), "{dup}");
        assert!(strong("   ", "T").is_err() && strong("short", "T").is_err());
        assert_eq!(
            strong(" 0123456789abcdef ", "T").ok(),
            Some("0123456789abcdef")
        );
        assert!(parse_tokens_file("t", "# nothing\n").is_err());
    }

    #[test]
    fn sign_ins_are_limited_per_address() {
        let s = Sessions::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(s.may_try(ip));
            s.failed(ip);
        }
        assert!(!s.may_try(ip));
        assert!(s.may_try([127, 0, 0, 2].into()));
    }
}
