#!/usr/bin/env python3
"""Writes recipes-phosphor/vmi/vmi-cert-exchange-crates.inc from the crate's Cargo.lock.

Every crates.io package in Cargo.lock becomes a crate:// URI with its sha256sum, keyed
<name>-<version> as poky's cargo-update-recipe-crates class does, so that bitbake fetches
exactly the locked crates and cargo builds offline. Run it after every Cargo.lock change;
`--check` exits 1 when the committed file is stale (CI runs that).

Usage: gen-crates-inc.py [--check] [--lock PATH] [--out PATH]
"""

import argparse
import pathlib
import sys
import tomllib

LAYER = pathlib.Path(__file__).resolve().parent.parent
REPO = LAYER.parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def render(lock_path: pathlib.Path) -> str:
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    uris = []
    sums = []
    for package in lock.get("package", []):
        source = package.get("source")
        if source is None:
            # The workspace's own crate: built from the recipe's source tree.
            continue
        if source != CRATES_IO:
            sys.exit(f"{lock_path}: {package['name']} comes from {source}, not crates.io; "
                     "the recipe would need its own SRC_URI entry for it")
        key = f"{package['name']}-{package['version']}"
        uris.append(f'SRC_URI += "crate://crates.io/{package["name"]}/{package["version"]};name={key}"')
        sums.append(f'SRC_URI[{key}.sha256sum] = "{package["checksum"]}"')
    if not uris:
        sys.exit(f"{lock_path}: no crates.io packages")
    header = [
        "# Generated from Cargo.lock by meta-vmi-cert-exchange/scripts/gen-crates-inc.py:",
        "# do not edit. One crate:// URI and checksum per locked crates.io package.",
        "",
    ]
    return "\n".join(header + uris + [""] + sums) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    parser.add_argument("--lock", type=pathlib.Path, default=REPO / "Cargo.lock")
    parser.add_argument("--out", type=pathlib.Path,
                        default=LAYER / "recipes-phosphor/vmi/vmi-cert-exchange-crates.inc")
    args = parser.parse_args()
    text = render(args.lock)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} does not match {args.lock}; run {pathlib.Path(__file__).name}",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
