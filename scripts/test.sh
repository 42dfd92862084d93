#!/usr/bin/env bash
# Every test of the project, on a fresh machine: set-up (idempotent), then the Rust test
# suite of the whole workspace (unit, integration, C/C++ host and golden tests).
# Heavier checks are opt-in: `cargo test -- --ignored` (see docs/testing.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
./scripts/fetch-photos.sh
cargo test --workspace --locked "$@"
