//! How long one load of a release index takes to verify: parse, canonical
//! form, signatures, every check. An index of 200 versions signed by 3 of
//! 3 trusted keys; the median of 500 runs. `cargo bench -p cutover-index`.

use std::time::Instant;

use cutover_index::{sign, verify, Expect, Signed, Version};
use ed25519_dalek::SigningKey;

fn main() {
    let keys: Vec<SigningKey> = (1..=3).map(|n| SigningKey::from_bytes(&[n; 32])).collect();
    let trusted: Vec<_> = keys.iter().map(SigningKey::verifying_key).collect();
    let versions = (0..200)
        .map(|i| Version {
            version: format!("1.{i}.0"),
            sha256: format!("{:064x}", i),
            size: 30_000_000 + i,
            published_at: "2026-12-01T00:00:00Z".into(),
            actor: "ops".into(),
            reason: "a reason of some length, as operators write them".into(),
            ticket: format!("T-{i}"),
        })
        .collect();
    let signed = Signed {
        schema_version: 1,
        job: "api".into(),
        seq: 400,
        expires: "2030-01-01T00:00:00Z".into(),
        channels: [("stable".to_string(), "1.199.0".to_string())].into(),
        versions,
    };
    let bytes = serde_json::to_vec_pretty(&sign(signed, &keys)).expect("json");
    let expect = Expect {
        job: "api",
        trusted: &trusted,
        threshold: 3,
        seen_seq: Some(399),
        now: "2026-12-01T00:00:00Z".parse().expect("now"),
        allow_expired: false,
    };
    let mut times: Vec<f64> = (0..500)
        .map(|_| {
            let start = Instant::now();
            let index = verify(&bytes, &expect).expect("verifies");
            std::hint::black_box(index);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "verify: {:.0} us (median of 500; index of {} bytes, 200 versions, 3 signatures)",
        times[times.len() / 2],
        bytes.len()
    );
}
