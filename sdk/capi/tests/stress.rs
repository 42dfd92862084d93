//! Threads under load, with cancels at random moments: 8 threads each restoring on its own
//! context (512 restores), and 8 threads sharing one context (128 restores). Every restore
//! that is not cancelled is bit-identical, in float, to the same restore run sequentially
//! beforehand; every cancelled one returns `DAVI_STATUS_CANCELLED` and leaves its output
//! untouched, and the context's next restore succeeds. A shared context serialises its
//! restores (none fails as busy); a restore started from a progress callback on a context
//! another thread is restoring on fails at once with `DAVI_STATUS_BUSY` (C_API.md, "Threads").
//!
//! Cancel points are drawn from a seeded generator per thread, so a failure replays; which
//! thread wins the shared context's lock is up to the scheduler and does not matter.
mod common;

use common::*;
use davi::*;
use davi_engine::restore::SplitMix64;
use davi_sdk::{DaviChannelLayout as L, DaviImage, DaviSampleType as T, DaviStatus as S};
use std::sync::Barrier;

const THREADS: usize = 8;
/// Distinct (picture, seed) restores the threads cycle through.
const VARIANTS: usize = 4;
const SIZE: (usize, usize) = (24, 16);
/// The value an output holds before a restore: a cancelled restore must leave it.
const UNTOUCHED: f32 = -7.0;

/// Input `v`: a test picture as RGB floats, different per variant.
fn input(v: usize) -> Vec<f32> {
    let (w, h) = SIZE;
    picture_u8(w + v, h, 3)
        .chunks((w + v) * 3)
        .flat_map(|row| row[..w * 3].iter().map(|b| *b as f32 / 255.0))
        .collect()
}

/// Restore variant `v` on `ctx` (tile 16, overlap 4: six tiles in one network call), with a
/// callback that cancels at its `cancel_at`-th call (never when 0). Status and output.
fn restore(ctx: &Ctx, spec: &Spec, v: usize, cancel_at: usize) -> (S, Vec<f32>) {
    let (w, h) = SIZE;
    let mut pixels = input(v);
    let mut out = vec![UNTOUCHED; w * h * 3];
    let i = DaviImage::new(
        w as u32,
        h as u32,
        T::F32,
        L::Rgb,
        (w * 12) as isize,
        pixels.as_mut_ptr().cast(),
    );
    let mut o = DaviImage::new(
        w as u32,
        h as u32,
        T::F32,
        L::Rgb,
        (w * 12) as isize,
        out.as_mut_ptr().cast(),
    );
    let mut calls = 0;
    let mut f = |_: f32| {
        calls += 1;
        calls != cancel_at
    };
    let mut p: Progress = &mut f;
    let mut opts = restore_options(16, 4, 100 + v as u64);
    set_progress(&mut opts, &mut p);
    let st = unsafe { davi_restore(ctx.0, &i, &mut o, spec.0, &opts) };
    (st, out)
}

/// The sequential results every threaded one must equal, bit for bit.
fn references(spec: &Spec) -> Vec<Vec<u32>> {
    let ctx = context(any_kind_model());
    (0..VARIANTS)
        .map(|v| {
            let (st, out) = restore(&ctx, spec, v, 0);
            assert_eq!(st, S::Ok, "{}", ctx.last_error());
            out.iter().map(|x| x.to_bits()).collect()
        })
        .collect()
}

/// Counts of one thread's outcomes.
#[derive(Default, Debug)]
struct Outcomes {
    ok: usize,
    cancelled_before: usize,
    cancelled_after: usize,
}

/// `n` restores on `ctx`, a third of them cancelled (before the first tile or after the
/// network ran); the restore after a cancel is never cancelled, so it shows the context still
/// works. Checks every result; `own` contexts also have their last error checked.
fn run(ctx: &Ctx, spec: &Spec, refs: &[Vec<u32>], seed: u64, n: usize, own: bool) -> Outcomes {
    let mut rng = SplitMix64(seed);
    let mut counts = Outcomes::default();
    let mut after_cancel = false;
    for k in 0..n {
        let v = (seed as usize + k) % VARIANTS;
        let cancel_at = match (after_cancel, rng.next() % 6) {
            (false, 0) => 1,
            (false, 1) => 2,
            _ => 0,
        };
        let (st, out) = restore(ctx, spec, v, cancel_at);
        if cancel_at == 0 {
            assert_eq!(
                st,
                S::Ok,
                "thread {seed}, restore {k}: {}",
                ctx.last_error()
            );
            let bits: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
            assert!(
                bits == refs[v],
                "thread {seed}, restore {k}: differs from the sequential restore"
            );
            counts.ok += 1;
        } else {
            assert_eq!(
                st,
                S::Cancelled,
                "thread {seed}, restore {k} (cancel at call {cancel_at})"
            );
            assert!(
                out.iter().all(|x| *x == UNTOUCHED),
                "thread {seed}, restore {k}: output written after a cancel"
            );
            if own {
                assert!(
                    ctx.last_error().contains("cancelled"),
                    "{}",
                    ctx.last_error()
                );
            }
            *if cancel_at == 1 {
                &mut counts.cancelled_before
            } else {
                &mut counts.cancelled_after
            } += 1;
        }
        after_cancel = cancel_at != 0;
    }
    counts
}

/// Sum the threads' outcomes and check both cancel points were exercised.
fn total(all: Vec<Outcomes>, restores: usize) {
    let t = all.into_iter().fold(Outcomes::default(), |a, b| Outcomes {
        ok: a.ok + b.ok,
        cancelled_before: a.cancelled_before + b.cancelled_before,
        cancelled_after: a.cancelled_after + b.cancelled_after,
    });
    assert_eq!(t.ok + t.cancelled_before + t.cancelled_after, restores);
    assert!(
        t.cancelled_before > 0 && t.cancelled_after > 0 && t.ok > restores / 2,
        "{t:?}"
    );
    eprintln!("{restores} restores: {t:?}");
}

#[test]
fn eight_threads_on_own_contexts_with_random_cancels_match_the_sequential_restores() {
    const PER_THREAD: usize = 64;
    let sp = spec("denoise");
    let refs = references(&sp);
    let start = Barrier::new(THREADS);
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (sp, refs, start) = (&sp, &refs, &start);
                s.spawn(move || {
                    let ctx = context(any_kind_model());
                    start.wait();
                    run(&ctx, sp, refs, t as u64, PER_THREAD, true)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    total(outcomes, THREADS * PER_THREAD);
}

#[test]
fn eight_threads_sharing_one_context_with_random_cancels_take_turns() {
    const PER_THREAD: usize = 16;
    let sp = spec("denoise");
    let refs = references(&sp);
    let ctx = context(any_kind_model());
    let start = Barrier::new(THREADS);
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ctx, sp, refs, start) = (&ctx, &sp, &refs, &start);
                s.spawn(move || {
                    start.wait();
                    run(ctx, sp, refs, 100 + t as u64, PER_THREAD, false)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    total(outcomes, THREADS * PER_THREAD);
    // The context works on its own afterwards.
    let (st, out) = restore(&ctx, &sp, 0, 0);
    assert_eq!(st, S::Ok, "{}", ctx.last_error());
    assert!(out.iter().map(|x| x.to_bits()).eq(refs[0].iter().copied()));
}

/// Thread A holds the shared context (parked inside its progress callback); thread B, from a
/// progress callback of its own restore on another context, restores on the shared one: that
/// must fail at once with `DAVI_STATUS_BUSY`, not wait (it could wait forever), and leave
/// both restores to finish normally.
#[test]
fn a_callback_restore_on_a_context_another_thread_holds_is_busy() {
    let sp = spec("denoise");
    let (shared, other) = (context(any_kind_model()), context(any_kind_model()));
    let (held, released) = (Barrier::new(2), Barrier::new(2));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut first = true;
            let mut hold = |_: f32| {
                if std::mem::take(&mut first) {
                    held.wait();
                    released.wait();
                }
                true
            };
            restore_with(&shared, &sp, &mut hold)
        });
        let b = s.spawn(|| {
            held.wait();
            let mut inner = None;
            let mut from_callback = |_: f32| {
                if inner.is_none() {
                    inner = Some(restore_with(&shared, &sp, &mut |_| true));
                }
                true
            };
            let outer = restore_with(&other, &sp, &mut from_callback);
            released.wait();
            (outer, inner)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a, S::Ok, "{}", shared.last_error());
    assert_eq!(b, (S::Ok, Some(S::Busy)));
}

/// A small u8 restore on `ctx` with `progress` as its callback: the status.
fn restore_with(ctx: &Ctx, spec: &Spec, progress: &mut dyn FnMut(f32) -> bool) -> S {
    let mut px = picture_u8(8, 8, 3);
    let i = DaviImage::new(8, 8, T::U8, L::Rgb, 24, px.as_mut_ptr().cast());
    let mut o = i;
    let mut p: Progress = progress;
    let mut opts = restore_options(0, 0, 0);
    set_progress(&mut opts, &mut p);
    unsafe { davi_restore(ctx.0, &i, &mut o, spec.0, &opts) }
}
