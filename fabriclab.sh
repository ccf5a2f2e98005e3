#!/usr/bin/env bash
# fabriclab's two set-up commands (see README.md):
#   ./fabriclab.sh drill [ARGS...]   set up the machine if needed, build, run the default drill
#                                    (fabriclab drill: a 6-host rack of real VMs, host-os update)
#   ./fabriclab.sh test  [CTEST...]  set up the machine if needed, build, run the whole test suite
#                                    (real-VM tests included)
# and, for developers:
#   ./fabriclab.sh build             set up and build only
#   ./fabriclab.sh bench [ARGS...]   the real-VM benchmark (fabriclab-bench-vm --json)
#
# test and bench also need the Debian guest images (testbed/build-debian-image.sh, ~25 min the
# first time on 2 cores): they are built once per machine into
# /var/cache/fabriclab/debian-images/<stamp> (stamp: the script's content), in the background
# while cmake builds, and handed to the tests as FABRICLAB_DEBIAN_IMAGES. The cache keeps the
# newest two stamps. FABRICLAB_DEBIAN_IMAGES set by the caller skips all of this.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${FABRICLAB_PRESET:-ci}
case "$PRESET" in  # each preset's binaryDir in CMakePresets.json
  ci) BUILD_DIR=build ;;
  dev) BUILD_DIR=build-dev ;;
  asan-ubsan) BUILD_DIR=build-asan ;;
  *) echo "FABRICLAB_PRESET: ci, dev or asan-ubsan, not '$PRESET'" >&2; exit 2 ;;
esac

setup() { bash testbed/setup.sh; }

say() { printf '[fabriclab] %s\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"  # setup.sh has checked that password-less sudo works
DEBIAN_CACHE=/var/cache/fabriclab/debian-images
DEBIAN_DIR=""
DEBIAN_PID=""
DEBIAN_LOG="$BUILD_DIR/debian-images.log"

# Removes cached Debian image sets but the current stamp and the newest other one; a set that a
# builder holds locked (being built or read by one) is left alone.
debian_images_prune() {
  local keep=$1 d n=0
  [ -d "$DEBIAN_CACHE" ] || return 0
  while read -r d; do
    [ "$d" = "$keep" ] && continue
    n=$((n + 1))
    [ "$n" -le 1 ] && continue
    if [ -e "$DEBIAN_CACHE/$d/.lock" ] && ! $SUDO flock -n "$DEBIAN_CACHE/$d/.lock" true; then
      say "keeping $DEBIAN_CACHE/$d: a build holds it"
      continue
    fi
    say "removing the old Debian images $DEBIAN_CACHE/$d"
    $SUDO rm -rf --one-file-system "${DEBIAN_CACHE:?}/$d" || say "could not remove all of $DEBIAN_CACHE/$d"
  done < <(cd "$DEBIAN_CACHE" && find . -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
             -regex './[0-9a-f]{16}' -printf '%T@ %f\n' | sort -rn | cut -d' ' -f2)
}

# Starts the Debian image build (it exits at once when the cache is up to date); the build takes
# the cache directory's lock, so a second checkout's build of the same stamp waits for this one.
debian_images_start() {
  if [ -n "${FABRICLAB_DEBIAN_IMAGES:-}" ]; then
    say "Debian images: FABRICLAB_DEBIAN_IMAGES=$FABRICLAB_DEBIAN_IMAGES (not building)"
    return
  fi
  local stamp
  stamp=$(bash testbed/build-debian-image.sh --stamp)
  DEBIAN_DIR=$DEBIAN_CACHE/$stamp
  debian_images_prune "$stamp"
  mkdir -p "$BUILD_DIR"
  if [ -e "$DEBIAN_DIR/.lock" ] && ! $SUDO flock -n "$DEBIAN_DIR/.lock" true; then
    say "another build of the Debian images is running into $DEBIAN_DIR: waiting for it"
  fi
  $SUDO bash testbed/build-debian-image.sh "$DEBIAN_DIR" >"$DEBIAN_LOG" 2>&1 &
  DEBIAN_PID=$!
  say "Debian images: building in the background (pid $DEBIAN_PID, log $DEBIAN_LOG)"
}

debian_images_wait() {
  [ -n "$DEBIAN_PID" ] || return 0
  local t0=$SECONDS
  if ! wait "$DEBIAN_PID"; then
    tail -n 30 "$DEBIAN_LOG" >&2
    say "ERROR: building the Debian guest images into $DEBIAN_DIR failed (log: $DEBIAN_LOG)"
    exit 1
  fi
  [ $((SECONDS - t0)) -lt 2 ] || say "waited $((SECONDS - t0)) s for the Debian images"
  grep -h '^\[build-debian-image\] \(up to date\|built in\)' "$DEBIAN_LOG" >&2 || true
  export FABRICLAB_DEBIAN_IMAGES=$DEBIAN_DIR
}

# A failed cmake build leaves the image build running: it finishes into the cache (and the next
# run finds it done or waits for it) instead of being thrown away.
debian_images_orphan_note() {
  if [ -n "$DEBIAN_PID" ] && kill -0 "$DEBIAN_PID" 2>/dev/null; then
    say "the Debian image build (pid $DEBIAN_PID) goes on in the background; log $DEBIAN_LOG"
  fi
}

build() {
  cmake --preset "$PRESET" >/dev/null
  cmake --build --preset "$PRESET"
}

# Sets up, builds with the Debian images building beside cmake, and waits for them (test, bench).
build_with_debian_images() {
  setup
  debian_images_start
  trap debian_images_orphan_note EXIT
  build
  debian_images_wait
  trap - EXIT
}

verb=${1:-}
[ $# -gt 0 ] && shift
case "$verb" in
  drill)
    setup
    build
    exec "$BUILD_DIR/cli/fabriclab" drill "$@"
    ;;
  test)
    build_with_debian_images
    cd "$BUILD_DIR"
    # Two jobs: the real-VM tests each boot TCG guests; more would only make them slower.
    # Tests that measure what clients saw append a line to tests/figures.txt (drill_test.cpp's
    # record_figure); it is printed after the suite, passed or not.
    rm -f tests/figures.txt
    rc=0
    ctest --output-on-failure -j2 "$@" || rc=$?
    if [ -s tests/figures.txt ]; then
      say "figures measured by this run's tests:"
      sed 's/^/  /' tests/figures.txt >&2
    fi
    exit "$rc"
    ;;
  build)
    setup
    build
    ;;
  bench)
    build_with_debian_images
    exec "$BUILD_DIR/testbed/fabriclab-bench-vm" --json "$@"
    ;;
  *)
    echo "usage: $0 drill|test|build|bench [ARGS...]" >&2
    exit 2
    ;;
esac
