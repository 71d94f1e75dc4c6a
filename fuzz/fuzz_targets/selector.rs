//! The config's scalar types: what parses must print, and what prints must parse back to the
//! same value and print the same again (the staged file is written with `Display` and read with
//! `FromStr`). The YAML form (`Serialize`/`Deserialize`) must round-trip too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::{Debug, Display};
use std::str::FromStr;
use tls_sidecar_config::{
    CertificateSource, ClientAuth, Guid, HostPort, LogFormat, MemoryMb, Millis, Mode, Selector,
    Xfcc,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<Selector>(text);
    round_trip::<Guid>(text);
    round_trip::<HostPort>(text);
    round_trip::<Millis>(text);
    round_trip::<MemoryMb>(text);
    round_trip::<Mode>(text);
    round_trip::<ClientAuth>(text);
    round_trip::<Xfcc>(text);
    round_trip::<CertificateSource>(text);
    round_trip::<LogFormat>(text);
});

fn round_trip<T>(text: &str)
where
    T: FromStr<Err = String> + Display + PartialEq + Debug + Serialize + DeserializeOwned,
{
    let value = match text.parse::<T>() {
        Ok(v) => v,
        Err(e) => {
            assert!(!e.is_empty(), "an empty error for {text:?}");
            return;
        }
    };
    let printed = value.to_string();
    let back: T = printed.parse().unwrap_or_else(|e| {
        panic!(
            "{text:?} parsed to {value:?}, which prints as {printed:?}, which does not parse: {e}"
        )
    });
    assert_eq!(back, value, "{text:?} -> {printed:?}");
    assert_eq!(
        back.to_string(),
        printed,
        "{text:?}: printing is not stable"
    );

    let yaml = serde_yaml_ng::to_string(&value)
        .unwrap_or_else(|e| panic!("{value:?} does not serialize: {e}"));
    let from_yaml: T = serde_yaml_ng::from_str(&yaml)
        .unwrap_or_else(|e| panic!("{value:?} written as YAML {yaml:?} does not read back: {e}"));
    assert_eq!(from_yaml, value, "YAML {yaml:?}");
}
