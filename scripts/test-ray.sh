#!/usr/bin/env bash
# Opt-in test of the Ray Data recipe (host-example/ray/restore_folder.py, docs/scale-out.md):
# a local Ray instance on 127.0.0.1 restores a small folder tree through libdavi's Python
# module, and every output's pixels must equal, byte for byte, those of `davi restore` on the
# same file (host-example/ray/test_restore_folder.py). Not part of ./scripts/test.sh: the Ray
# venv is about 640 MB and needs the network once. About a minute on a 2-core machine.
#
#   ./scripts/test-ray.sh
#   DAVI_RAY_VENV=~/venvs/ray ./scripts/test-ray.sh     # the venv elsewhere
#   CARGO="flock /tmp/cargo-build.lock cargo" ./scripts/test-ray.sh
#
# 1. The venv: $DAVI_RAY_VENV (default target/ray-venv, git-ignored), made with $PYTHON
#    (default python3, 3.10 or newer) and scripts/requirements-ray.txt (ray[data]==2.60.0 and
#    its pinned companions); reused while the pins match.
# 2. The binaries: $DAVI_BIN and $DAVI_LIBRARY if both are set, else a debug build of
#    davi-cli and davi-capi (`$CARGO build --locked`, after scripts/setup.sh for libtorch).
# 3. Ray without telemetry, on loopback, with a one-off auth token in the environment (nothing
#    written to ~/.ray) and its session files under the test's temporary folder.
#
# Exit status: 0 passed; 1 failed; 77 skipped, only when Ray cannot be installed here (no
# Python 3.10+, no venv module, or pip cannot fetch the pinned wheels: no network, or no
# wheel for this platform), with the reason on stderr.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$(date +%s)
skip() { echo "test-ray: SKIPPED (exit 77): $*" >&2; exit 77; }
fail() { echo "test-ray: FAILED: $*" >&2; exit 1; }

venv="${DAVI_RAY_VENV:-$root/target/ray-venv}"
py="${PYTHON:-python3}"
reqs="$root/scripts/requirements-ray.txt"
# Whether the venv holds exactly the pinned versions (names with extras stripped).
pins_ok() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$reqs" <<'PY' 2>/dev/null
import re, sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)", line)
    if m and version(m.group(1)) != m.group(3):
        sys.exit(1)
PY
}
if ! pins_ok; then
  command -v "$py" >/dev/null || skip "no $py to make the Ray venv with (set PYTHON)"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    skip "Ray 2.60 needs Python 3.10 or newer; $py is $("$py" -V 2>&1)"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || skip "$py cannot make a venv (on Debian: apt-get install python3-venv)"
  fi
  echo "test-ray: installing $(grep -c '==' "$reqs") pinned packages into $venv (about 640 MB)" >&2
  where="$(uname -sm), $("$venv/bin/python" -V 2>&1)"
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$reqs" ||
    skip "pip cannot install the pinned Ray wheels into $venv ($where): no network, or" \
      "no wheel for this platform; pip's message is above"
  pins_ok || fail "the venv $venv does not hold the versions of $reqs after installing them"
fi

if [ -z "${DAVI_BIN:-}" ] || [ -z "${DAVI_LIBRARY:-}" ]; then
  ./scripts/setup.sh >/dev/null || fail "scripts/setup.sh (libtorch) failed"
  ${CARGO:-cargo} build --locked -p davi-cli -p davi-capi || fail "cargo build failed"
  DAVI_BIN="$root/target/debug/davi"
  DAVI_LIBRARY="$root/target/debug/libdavi.so"
fi
[ -x "$DAVI_BIN" ] || fail "DAVI_BIN=$DAVI_BIN is not an executable"
[ -f "$DAVI_LIBRARY" ] || fail "DAVI_LIBRARY=$DAVI_LIBRARY is not a file"

# Ray: no usage statistics, no rewriting of 127.0.0.1 to the interface address, token
# authentication with a token that lives only in this environment, no cluster to join.
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token
RAY_AUTH_TOKEN="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
export RAY_AUTH_TOKEN
unset RAY_ADDRESS
export DAVI_BIN DAVI_LIBRARY DAVI_TEST_MODELS="${DAVI_TEST_MODELS:-$root/models}"
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" "$root/host-example/ray/test_restore_folder.py"
rc=$?
verdict=$([ $rc = 0 ] && echo passed || echo FAILED)
echo "test-ray: $verdict in $(( $(date +%s) - t0 )) s (ray $("$venv/bin/python" -c 'import ray; print(ray.__version__)'))" >&2
[ $rc = 0 ] || exit 1
