#!/usr/bin/env bash
# Builds pairs of consecutive releases of real software as image tars, for the delta benchmark
# (`delta-bench`) and by-hand delta checks. Each release is a manylinux wheel from the Python
# package index, unpacked into a tree and archived the way our images are: names sorted, mtime 0,
# owner and group 0.
#
#   benches/image-pairs.sh OUT_DIR [package:old:new ...]
#
# OUT_DIR/<package>-<old>-<new>/ then holds old/, new/, old.tar and new.tar. With no pair given,
# numpy 2.1.1→2.1.2, cryptography 43.0.0→43.0.1 and django 5.1.1→5.1.2 are built.
set -euo pipefail
out=${1:?usage: image-pairs.sh OUT_DIR [package:old:new ...]}
shift
if [ $# -eq 0 ]; then
  set -- numpy:2.1.1:2.1.2 cryptography:43.0.0:43.0.1 django:5.1.1:5.1.2
fi
mkdir -p "$out"
for spec in "$@"; do
  IFS=: read -r package old new <<<"$spec"
  pair="$out/$package-$old-$new"
  [ -f "$pair/new.tar" ] && { echo "$pair: present"; continue; }
  mkdir -p "$pair"
  for release in old new; do
    version=$([ "$release" = old ] && echo "$old" || echo "$new")
    wheels=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$wheels" "$package==$version"
    rm -rf "${pair:?}/$release"
    mkdir -p "$pair/$release"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[2]).extractall(sys.argv[1])' \
      "$pair/$release" "$wheels"/*.whl
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
      -cf "$pair/$release.tar" -C "$pair/$release" .
    rm -rf "$wheels"
  done
  echo "$pair: $(stat -c %s "$pair/old.tar") → $(stat -c %s "$pair/new.tar") bytes"
done
