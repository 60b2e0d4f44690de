#!/usr/bin/env bash
# Unpacks the Debian packages named in tests/tools/debian-packages.txt into
# .tools/debian/root, with apt's lists and cache kept under .tools/debian too,
# so it needs no root, starts no service and writes nothing outside .tools/.
# Each program is reachable as .tools/bin/NAME, a wrapper that sets the
# library path to the unpacked libraries. Run by `make tools`; rerun whenever
# the package list changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
list=tests/tools/debian-packages.txt
dest=.tools/debian
bin=.tools/bin
rm -rf "$dest/root" "$dest/debs"
mkdir -p "$dest/lists/partial" "$dest/cache/archives/partial" "$dest/debs" "$bin"
opts=(-qq -o "Dir::State::Lists=$PWD/$dest/lists" -o "Dir::Cache=$PWD/$dest/cache"
      -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
apt-get "${opts[@]}" update
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list")
(cd "$dest/debs" && apt-get "${opts[@]}" download "${pkgs[@]}")
for deb in "$dest"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
done
libs="$PWD/$dest/root/usr/lib/x86_64-linux-gnu:$PWD/$dest/root/lib/x86_64-linux-gnu"
for dir in usr/bin usr/sbin; do
    [ -d "$dest/root/$dir" ] || continue
    for prog in "$dest/root/$dir"/*; do
        name=$(basename "$prog")
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
            "$libs" "$PWD/$prog" >"$bin/$name"
        chmod +x "$bin/$name"
    done
done
echo "debian packages unpacked into $dest/root: ${pkgs[*]}"
