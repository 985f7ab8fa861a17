#!/usr/bin/env bash
# The MSRV claim (`rust-version` in Cargo.toml) checked without the old toolchain, which these
# machines cannot install: every package the core crate builds with, for Linux, Windows and
# macOS, declares a `rust-version` no newer than ours (or none). Our own code is held to it by
# clippy's `incompatible_msrv` lint, which the workspace clippy step denies like any warning.
set -euo pipefail
cd "$(dirname "$0")/.."

meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --locked >"$meta"

for target in x86_64-unknown-linux-gnu x86_64-pc-windows-msvc aarch64-apple-darwin; do
    # The normal and build dependencies only: dev-dependencies and the `cfg(loom)` and
    # `cfg(shuttle)` ones serve this repository's tests, not a user's build.
    cargo tree --locked -p latchless -e normal,build --target "$target" --prefix none \
        -f '{p}' | sed 's/ (.*//; s/ (\*)$//' | sort -u |
        python3 -c '
import json, sys
meta = json.load(open(sys.argv[1]))
target = sys.argv[2]
versions = {(p["name"], "v" + p["version"]): p.get("rust_version") for p in meta["packages"]}
ours = next(p["rust_version"] for p in meta["packages"] if p["name"] == "latchless")
def key(v):
    return tuple(int(x) for x in v.split("."))[:3] + (0,) * (3 - len(v.split(".")))
bad = []
count = 0
for line in sys.stdin:
    parts = line.split()
    if len(parts) < 2:
        continue
    count += 1
    need = versions.get((parts[0], parts[1]))
    if need and key(need) > key(ours):
        bad.append(f"{parts[0]} {parts[1]} needs Rust {need}")
if bad:
    print(f"{target}: newer than our rust-version {ours}:")
    print("\n".join("  " + b for b in bad))
    sys.exit(1)
print(f"{target}: {count} packages, none needs Rust newer than {ours}")
' "$meta" "$target"
done
