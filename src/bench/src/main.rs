//! Placeholder until the bench engineer lands the load generator.
fn main() {}
