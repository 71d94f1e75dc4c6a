//! Random GUIDs and serials, and the clock.

/// 16 random bytes with the top bit clear, so that as a serial number they are positive.
pub fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    bytes[0] &= 0x7f;
    bytes
}

/// A random GUID in the 8-4-4-4-12 form Cloud Foundry uses.
pub fn new_guid() -> String {
    let h = hex::encode(random_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
