#!/usr/bin/env bash
# Fetches the three ARC-paper block I/O traces that the hit-ratio test and benchmark replay
# (OLTP, P3, P6; zstd-compressed, as published) and checks each against its SHA-256.
#
#     scripts/fetch_traces.sh [DIR]     # DIR defaults to ../shared/traces, where the tests look
#
# For anyone outside this repository's CI, which has the traces already; CI does not run it.
# Without the traces the tests that replay them skip, saying so. Source: the public repository
# moka-rs/cache-trace, directory arc/, pinned to one commit, so the bytes never change under us.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-../shared/traces}
commit=ef0a9de8cf0202a1f2fee186a0af497774b0f0a9
base="https://raw.githubusercontent.com/moka-rs/cache-trace/$commit/arc"

# name, then SHA-256 of the compressed file.
traces=(
    "OLTP.lis.zst 2a81096104b6de28aae54558b764bb32fe2ac3beb8a7dcdee1259af8798d3531"
    "P3.lis.zst 4110048c690756400675b14f200989fae351b62147705dac9637bbcff6d29751"
    "P6.lis.zst b29d69e47631d77e125474918fe4292d614c2139b72fbf1991fa4a1feb6617e7"
)

command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
command -v sha256sum >/dev/null || { echo "sha256sum is needed" >&2; exit 1; }
mkdir -p "$dir"

for entry in "${traces[@]}"; do
    read -r name sum <<<"$entry"
    dest="$dir/$name"
    if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum --check --status; then
        echo "$name: present, checksum ok"
        continue
    fi
    tmp=$(mktemp "$dir/.$name.XXXXXX")
    echo "$name: fetching"
    if ! curl -fsSL --retry 3 -o "$tmp" "$base/$name"; then
        rm -f "$tmp"
        echo "$name: download failed" >&2
        exit 1
    fi
    if ! echo "$sum  $tmp" | sha256sum --check --status; then
        rm -f "$tmp"
        echo "$name: checksum mismatch, not kept" >&2
        exit 1
    fi
    mv "$tmp" "$dest"
    echo "$name: ok"
done
