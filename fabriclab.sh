#!/usr/bin/env bash
# fabriclab's two set-up commands (see README.md):
#   ./fabriclab.sh drill [ARGS...]   set up the machine if needed, build, run the default drill
#                                    (fabriclab drill: a 6-host rack of real VMs, host-os update)
#   ./fabriclab.sh test  [CTEST...]  set up the machine if needed, build, run the whole test suite
#                                    (real-VM tests included)
# and, for developers:
#   ./fabriclab.sh build             set up and build only
#   ./fabriclab.sh bench [ARGS...]   the real-VM benchmark (fabriclab-bench-vm --json)
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${FABRICLAB_PRESET:-ci}
BUILD_DIR=build

setup() { bash testbed/setup.sh; }

build() {
  cmake --preset "$PRESET" >/dev/null
  cmake --build --preset "$PRESET"
}

verb=${1:-}
[ $# -gt 0 ] && shift
case "$verb" in
  drill)
    setup
    build
    exec "$BUILD_DIR/orchestrator/fabriclab" drill "$@"
    ;;
  test)
    setup
    build
    cd "$BUILD_DIR"
    # Two jobs: the real-VM tests each boot TCG guests; more would only make them slower.
    exec ctest --output-on-failure -j2 "$@"
    ;;
  build)
    setup
    build
    ;;
  bench)
    setup
    build
    exec "$BUILD_DIR/testbed/fabriclab-bench-vm" --json "$@"
    ;;
  *)
    echo "usage: $0 drill|test|build|bench [ARGS...]" >&2
    exit 2
    ;;
esac
