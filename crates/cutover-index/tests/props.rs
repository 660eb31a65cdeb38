//! Properties of the signed index: any change to a signed field breaks
//! the signature; the canonical form is stable under re-serialization;
//! verification never panics on arbitrary bytes.

use cutover_index::{canonical, sign, verify, Expect, Refused, Signed, Version};
use ed25519_dalek::{SigningKey, VerifyingKey};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.+_-]{0,12}"
}

fn version() -> impl Strategy<Value = Version> {
    (name(), "[0-9a-f]{64}", any::<u32>(), ".{0,16}", ".{0,16}").prop_map(
        |(version, sha256, size, actor, reason)| Version {
            version,
            sha256,
            size: u64::from(size),
            published_at: "2026-12-01T00:00:00Z".into(),
            actor,
            reason,
            ticket: String::new(),
        },
    )
}

fn signed() -> impl Strategy<Value = Signed> {
    (
        any::<u64>(),
        prop::collection::vec(version(), 1..5),
        any::<bool>(),
    )
        .prop_map(|(seq, versions, canary)| {
            let mut channels = std::collections::BTreeMap::new();
            channels.insert("stable".to_string(), versions[0].version.clone());
            if canary {
                let last = versions[versions.len() - 1].version.clone();
                channels.insert("canary".to_string(), last);
            }
            Signed {
                schema_version: 1,
                job: "api".into(),
                seq,
                expires: "2030-01-01T00:00:00Z".into(),
                channels,
                versions,
            }
        })
}

fn expect(trusted: &[VerifyingKey]) -> Expect<'_> {
    Expect {
        job: "api",
        trusted,
        threshold: 1,
        seen_seq: None,
        now: "2026-12-01T00:00:00Z".parse().expect("now"),
        allow_expired: false,
    }
}

/// One change to one signed field, chosen by `which`.
fn mutate(s: &mut Signed, which: u8, text: &str) {
    let v = &mut s.versions[0];
    match which % 9 {
        0 => s.seq = s.seq.wrapping_add(1),
        1 => s.expires = "2031-01-01T00:00:00Z".into(),
        2 => {
            s.channels.insert("canary".into(), format!("{text}9"));
        }
        3 => {
            let first = if v.sha256.starts_with('0') { "1" } else { "0" };
            v.sha256.replace_range(0..1, first);
        }
        4 => v.size = v.size.wrapping_add(1),
        5 => v.actor.push_str(text),
        6 => v.reason.push_str(text),
        7 => v.ticket.push_str(text),
        _ => v.version.push_str(text),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_change_to_a_signed_field_breaks_the_signature(
        s in signed(), which in any::<u8>(), text in "[a-z]{1,4}", seed in any::<[u8; 32]>()
    ) {
        let key = SigningKey::from_bytes(&seed);
        let trusted = [key.verifying_key()];
        let mut index = sign(s, std::slice::from_ref(&key));
        let bytes = serde_json::to_vec(&index).expect("json");
        prop_assert!(verify(&bytes, &expect(&trusted)).is_ok());
        let before = canonical(&index.signed);
        mutate(&mut index.signed, which, &text);
        prop_assert_ne!(canonical(&index.signed), before);
        let bytes = serde_json::to_vec(&index).expect("json");
        let refused = verify(&bytes, &expect(&trusted));
        prop_assert!(matches!(refused, Err(Refused::Threshold { valid: 0, .. })), "{:?}", refused);
    }

    #[test]
    fn the_canonical_form_is_stable(s in signed()) {
        let once = canonical(&s);
        let back: Signed = serde_json::from_slice(&once).expect("parse");
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(canonical(&back), once.clone());
        let pretty = serde_json::to_string_pretty(&s).expect("json");
        let again: Signed = serde_json::from_str(&pretty).expect("parse");
        prop_assert_eq!(canonical(&again), once);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let trusted = [SigningKey::from_bytes(&[1; 32]).verifying_key()];
        let _ = verify(&bytes, &expect(&trusted));
    }

    #[test]
    fn a_truncated_or_flipped_index_is_refused(
        s in signed(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()
    ) {
        let key = SigningKey::from_bytes(&[3; 32]);
        let trusted = [key.verifying_key()];
        let bytes = serde_json::to_vec(&sign(s, &[key])).expect("json");
        let n = cut.index(bytes.len());
        prop_assert!(verify(&bytes[..n], &expect(&trusted)).is_err());
        // One flipped bit either fails to parse, fails the signature or a
        // field check, or (in the signature's own base64 padding bits, or
        // a key id, which is not signed) leaves the same signed content.
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 0x01;
        if let Ok(index) = verify(&flipped, &expect(&trusted)) {
            let original: cutover_index::Index = serde_json::from_slice(&bytes).expect("json");
            prop_assert_eq!(index.signed, original.signed);
        }
    }
}
