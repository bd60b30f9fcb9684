//! Deterministic bench gates (run by `cargo xtask ci`): counts and bytes,
//! never wall-clock times.

#[test]
fn gates_are_wired() {
    assert!(!benches::payloads::PROGRESS.is_empty());
}
