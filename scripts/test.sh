#!/usr/bin/env bash
# Every test of the project, on a fresh machine: set-up (idempotent), `cargo fmt --check`,
# `cargo clippy -D warnings`, then the Rust test suite of the whole workspace (unit,
# integration, C/C++/GIMP/Python/ffmpeg/GStreamer host and golden tests). scripts/setup-hosts.sh installs gimp, libgimp2.0-dev, ffmpeg and GStreamer 1.22
# from Debian (the GStreamer -dev packages are needed to build the workspace).
# Heavier checks are opt-in: `cargo test -- --ignored` (see docs/testing.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
./scripts/setup-hosts.sh
./scripts/fetch-photos.sh
# Style and lints first (seconds once built): rustfmt's default style, and clippy with the
# workspace's lints (`[workspace.lints]` in Cargo.toml) as errors on every target.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
