#!/bin/sh
# Builds the crate with cargo and copies the binary to where meson expects its output.
# Usage: cargo-build.sh CARGO MANIFEST TARGET_DIR PROFILE OFFLINE TRIPLE OUTPUT
# TRIPLE may be empty: then CARGO_BUILD_TARGET (as bitbake's cargo classes and cross setups
# export it) decides, else the host. Cargo puts a target's artifacts in
# <target-dir>/<triple>/<profile>/ and the host's in <target-dir>/<profile>/.
set -eu
cargo=$1 manifest=$2 target_dir=$3 profile=$4 offline=$5 triple=$6 output=$7

triple=${triple:-${CARGO_BUILD_TARGET:-}}
set -- build --locked --manifest-path "$manifest" --target-dir "$target_dir" --bin vmi-cert-exchange
case $profile in
    release) set -- "$@" --release; profile_dir=release ;;
    debug) profile_dir=debug ;;
    *) echo "cargo-build.sh: unknown profile $profile" >&2; exit 2 ;;
esac
if [ "$offline" = true ]; then
    set -- "$@" --offline
fi
if [ -n "$triple" ]; then
    set -- "$@" --target "$triple"
    artifact=$target_dir/$triple/$profile_dir/vmi-cert-exchange
else
    artifact=$target_dir/$profile_dir/vmi-cert-exchange
fi
"$cargo" "$@"
cp "$artifact" "$output"
