//! Unit tests' turns on libtorch's process-wide random generator (compiled for tests only).
//!
//! `tch::manual_seed` reseeds the one CPU generator every thread shares, and `cargo test` runs
//! the unit tests in parallel threads: without turns, a test that seeds and then draws could
//! see another test's draws, or its reseeding, in between. Every unit test that draws from the
//! generator (`Tensor::rand`, `randn`, `randn_like`, the initialisation of a network, noise
//! added by an operator) starts with `let _rng = seeded(n);`, which waits for its turn and
//! seeds the generator, so the test sees the same numbers on every run. Integration tests are
//! their own processes and have their own locks (`tests/restore.rs`, `tests/train.rs`).
use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());

/// Wait for this test's turn on the generator, then seed it; the turn lasts as long as the
/// returned guard (a poisoned lock, left by a failed test, is taken over).
pub(crate) fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}
