#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trusted = [ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key()];
    let expect = cutover_index::Expect {
        job: "api",
        trusted: &trusted,
        threshold: 1,
        seen_seq: Some(3),
        now: jiff::Timestamp::UNIX_EPOCH,
        allow_expired: false,
    };
    let _ = cutover_index::verify(data, &expect);
});
