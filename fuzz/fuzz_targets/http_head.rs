//! Request heads from arbitrary bytes. The admin parser must never panic and must answer with a
//! bounded head; the http mode's framing watcher (which decides which request is refused for
//! carrying both Content-Length and Transfer-Encoding) must reach the same verdict however the
//! bytes are split into reads, because TCP decides the splits, not the client. The fast HTTP/1.1
//! side's parse (`GET` without a body, served without hyper) must leave what it does not take
//! whole for hyper, and give the app one head with only the sidecar's own forwarding fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_sidecar::fuzzing::{admin_head, framing_verdict, plain_head};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((method, path))) = admin_head(data) {
        assert!(!method.is_empty() && path.starts_with('/'), "{method:?} {path:?}");
    }
    // The first byte picks a split pattern; the rest is the stream.
    let Some((&seed, stream)) = data.split_first() else { return };
    if let Err(broken) = plain_head(stream) {
        panic!("{broken}");
    }
    let whole = framing_verdict(stream, &[]);
    let bytewise = framing_verdict(stream, &vec![1; stream.len()]);
    let step = usize::from(seed % 7) + 1;
    let chunked = framing_verdict(stream, &vec![step; stream.len() / step + 1]);
    assert_eq!(whole, bytewise, "byte-at-a-time reads changed the verdict");
    assert_eq!(whole, chunked, "{step}-byte reads changed the verdict");
});
