#!/usr/bin/env bash
# Runs every test of the workspace, the QEMU lab included: fetches the lab's inputs if needed
# (QEMU from bookworm-backports, the kernel), then `cargo test --workspace`. Extra arguments go
# to cargo test. Run as root (the tests use /dev/kvm, network namespaces and QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hw-tests/setup.sh
exec cargo test --workspace "$@"
