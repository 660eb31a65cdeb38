//! The text form of keys. A private key file is two lines,
//! `cutover ed25519 signing key` and the 32-byte seed in hex; a public key
//! file is `cutover ed25519 public key` and the 32-byte key in hex. A key
//! id is the hex SHA-256 of the 32-byte public key.

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub const PRIVATE_HEADER: &str = "cutover ed25519 signing key";
pub const PUBLIC_HEADER: &str = "cutover ed25519 public key";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The key id of a public key: hex SHA-256 of its 32 bytes.
pub fn keyid(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

pub fn format_private(key: &SigningKey) -> String {
    format!("{PRIVATE_HEADER}\n{}\n", hex(&key.to_bytes()))
}

pub fn format_public(key: &VerifyingKey) -> String {
    format!("{PUBLIC_HEADER}\n{}\n", hex(key.as_bytes()))
}

fn body<'a>(text: &'a str, header: &str) -> Option<&'a str> {
    let mut lines = text.lines();
    (lines.next()?.trim() == header).then(|| lines.next())?
}

pub fn parse_private(text: &str) -> Option<SigningKey> {
    Some(SigningKey::from_bytes(&unhex32(body(
        text,
        PRIVATE_HEADER,
    )?)?))
}

pub fn parse_public(text: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&unhex32(body(text, PUBLIC_HEADER)?)?).ok()
}

/// Whether bytes look like a private key file (never published).
pub fn is_private(bytes: &[u8]) -> bool {
    bytes.starts_with(PRIVATE_HEADER.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let back = parse_private(&format_private(&k)).expect("private");
        assert_eq!(back.to_bytes(), k.to_bytes());
        let p = parse_public(&format_public(&k.verifying_key())).expect("public");
        assert_eq!(keyid(&p), keyid(&k.verifying_key()));
        assert_eq!(keyid(&p).len(), 64);
        assert!(parse_public("cutover ed25519 public key\nzz\n").is_none());
        assert!(parse_public(&format_private(&k)).is_none());
        assert!(parse_private(&format_public(&k.verifying_key())).is_none());
    }
}
