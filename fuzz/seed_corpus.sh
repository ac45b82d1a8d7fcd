#!/bin/sh
# Seeds fuzz/corpus/decode_frame from the golden frames: one file per golden
# frame, plus all of them concatenated (a multi-frame stream); and
# fuzz/corpus/decode_lzma with `.lzma` streams of the protocol's sources
# (xz-utils writes them).
set -eu
here=$(dirname "$0")
golden="$here/../protocol/tests/golden"
out="$here/corpus/decode_frame"
mkdir -p "$out"
: > "$out/all_frames"
for f in "$golden"/*.hex; do
    name=$(basename "$f" .hex)
    tr -d ' \n' < "$f" | xxd -r -p > "$out/golden_$name"
    cat "$out/golden_$name" >> "$out/all_frames"
done
ls "$out" | wc -l | xargs echo "seed files in $out:"
lzma="$here/corpus/decode_lzma"
mkdir -p "$lzma"
for f in "$here"/../protocol/src/*.rs; do
    xz --format=lzma -c "$f" > "$lzma/$(basename "$f").lzma"
done
ls "$lzma" | wc -l | xargs echo "seed files in $lzma:"
