#!/usr/bin/env bash
# Runs the factory suite on the emulated appliance (QEMU with SR-IOV NICs, VT-d and SVM):
# fetches the lab's inputs if needed, builds the appliance image, boots it, runs hw-test there
# and prints its report. Extra arguments go to hw-qemu (see --help). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hw-tests/setup.sh
exec cargo run --release -p hw-tests --bin hw-qemu -- "$@"
