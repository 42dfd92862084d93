#!/usr/bin/env bash
# Idempotent set-up of the host programs the host tests drive, from Debian's packages:
#   gimp (gimp-console-2.10), libgimp2.0-dev (headers + pkg-config for the plug-in), ffmpeg;
#   GStreamer 1.22: libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev (the libraries the
#   davirestore element, host-example/gstreamer, links, and libgstcheck for its tests: the
#   workspace does not build without them), gstreamer1.0-tools (gst-launch-1.0,
#   gst-inspect-1.0) and gstreamer1.0-plugins-base (videotestsrc, videoconvert).
# Versions are pinned to the Debian 12 (bookworm) builds the tests were written against; when
# the mirror has moved on to a newer security build of the same series, that build is taken
# and its series is checked instead (GIMP 2.10.x, ffmpeg 5.1.x, GStreamer 1.22.x), so the API
# the plug-ins compile against cannot change underneath them. Needs root (or sudo) when
# something is missing.
set -euo pipefail
want=(gimp=2.10.34-1+deb12u10 libgimp2.0-dev=2.10.34-1+deb12u10 ffmpeg=7:5.1.9-0+deb12u1
      libgstreamer1.0-dev=1.22.0-2+deb12u1 libgstreamer-plugins-base1.0-dev=1.22.0-3+deb12u7
      gstreamer1.0-tools=1.22.0-2+deb12u1 gstreamer1.0-plugins-base=1.22.0-3+deb12u7)
gst_packages=(libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
              gstreamer1.0-plugins-base)
series_ok() {
  dpkg-query -W -f='${Version}' gimp 2>/dev/null | grep -q '^2\.10\.' &&
  dpkg-query -W -f='${Version}' libgimp2.0-dev 2>/dev/null | grep -q '^2\.10\.' &&
  dpkg-query -W -f='${Version}' ffmpeg 2>/dev/null | grep -q '^7:5\.1\.' &&
  for p in "${gst_packages[@]}"; do
    dpkg-query -W -f='${Version}' "$p" 2>/dev/null | grep -q '^1\.22\.' || return 1
  done &&
  command -v gimp-console-2.10 >/dev/null && command -v ffmpeg >/dev/null &&
  command -v gst-launch-1.0 >/dev/null && command -v gst-inspect-1.0 >/dev/null &&
  pkg-config --exists gimp-2.0 gegl-0.4 &&
  pkg-config --exists gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0 gstreamer-check-1.0
}
if series_ok; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup-hosts: gimp 2.10, libgimp2.0-dev, ffmpeg 5.1 and GStreamer 1.22 (with its -dev packages and tools) are needed and this is not a Debian-like system; install them and re-run" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo=(sudo); else
    echo "setup-hosts: installing gimp, libgimp2.0-dev, ffmpeg and GStreamer needs root (no sudo here)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup-hosts: installing ${want[*]} (apt)" >&2
"${sudo[@]}" apt-get update -qq
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null; then
  echo "setup-hosts: the pinned builds are gone from the mirror; taking the current builds of the same series" >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends gimp libgimp2.0-dev ffmpeg \
    "${gst_packages[@]}" >/dev/null
fi
if ! series_ok; then
  echo "setup-hosts: installed versions are not GIMP 2.10.x / ffmpeg 5.1.x / GStreamer 1.22.x:" >&2
  dpkg-query -W gimp libgimp2.0-dev ffmpeg "${gst_packages[@]}" >&2 || true
  exit 1
fi
