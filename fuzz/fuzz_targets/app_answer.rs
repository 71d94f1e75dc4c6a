//! An app's answers from arbitrary bytes, as the http mode's client toward the app reads them.
//! The app is a peer the sidecar trusts less than itself: a buggy or compromised app must not
//! make the reader panic, and the reader must reach the same answer (or the same refusal)
//! however the bytes are split into reads, because TCP decides the splits, not the app.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar::fuzzing::app_answer;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a split pattern; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = app_answer(stream, stream.len().max(1));
    let bytewise = app_answer(stream, 1);
    let step = usize::from(seed % 7) + 1;
    let pieces = app_answer(stream, step);
    assert_eq!(whole, bytewise, "byte-at-a-time reads changed the answer");
    assert_eq!(whole, pieces, "{step}-byte reads changed the answer");
    if let Ok((_, body, _)) = &whole {
        assert!(body.len() <= stream.len(), "the body is longer than the stream");
    }
});
