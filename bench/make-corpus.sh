#!/usr/bin/env bash
# Builds the benchmark corpus (default folder: bench/corpus, git-ignored):
#   small/  500 single-frame CT instances of ~528 KB each, one study and series (264 MB)
#   large/  20 multi-frame CT instances of 20-50 MB each, one study (697 MB)
#   huge/   1 multi-frame CT instance of 2000 frames (~1.05 GB), for the memory test
# Each set is built only if it is missing or incomplete, into a temporary folder that is
# renamed when done, so an interrupted run never leaves a set that looks complete.
#
# Source: testdata/5.dcm of the Go module github.com/suyashkumar/dicom@v1.1.0 (a real
# uncompressed 512x512x16-bit Enhanced CT, Explicit VR Little Endian), fetched with
# `go mod download` (from the module cache when it is there). Needs go and DCMTK's dcmodify.
# Note: the multi-frame files keep only 2 per-frame functional group items, so they break
# the Enhanced CT object definition; that does not matter for transfer and storage tests.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/corpus}
command -v go >/dev/null || { echo "make-corpus: go is missing" >&2; exit 1; }
command -v dcmodify >/dev/null || { echo "make-corpus: dcmodify missing: apt-get install -y dcmtk" >&2; exit 1; }

SMALL_N=500
LARGE_FRAMES="38 41 44 47 50 53 56 59 62 65 68 71 74 77 80 83 86 89 92 95"
HUGE_FRAMES=2000
FRAME=524288 # 512 x 512 x 2 bytes

complete() { # complete DIR N: DIR holds exactly N .dcm files
  [ -d "$1" ] && [ "$(find "$1" -maxdepth 1 -name '*.dcm' -type f | wc -l)" -eq "$2" ]
}
need_small=1 need_large=1 need_huge=1
complete "$OUT/small" "$SMALL_N" && need_small=0
complete "$OUT/large" 20 && need_large=0
complete "$OUT/huge" 1 && need_huge=0
if [ $((need_small + need_large + need_huge)) -eq 0 ]; then
  echo "corpus complete in $OUT"
  exit 0
fi

mkdir -p "$OUT"
W=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$W"' EXIT
MODDIR=$(cd "$W" && go mod download -json github.com/suyashkumar/dicom@v1.1.0 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
SRC=$MODDIR/testdata/5.dcm
[ -f "$SRC" ] || { echo "make-corpus: no $SRC" >&2; exit 1; }
# The pixel data of 5.dcm is its last 1 MiB (two 512x512x2 frames).
tail -c $((2 * FRAME)) "$SRC" > "$W/pix2.raw"

# pixels N FILE: N frames, repeating the two source frames
pixels() {
  : > "$2"
  local k
  for ((k = 0; k < ($1 + 1) / 2; k++)); do cat "$W/pix2.raw"; done >> "$2"
  truncate -s $(($1 * FRAME)) "$2"
}

# The multi-frame template: new study and series UIDs (shared by large/ and huge/).
cp "$SRC" "$W/mf.dcm"
dcmodify -nb -q -gst -gse "$W/mf.dcm"

if [ $need_small = 1 ]; then
  echo "make-corpus: small ($SMALL_N instances)"
  T=$W/small && mkdir "$T"
  head -c $FRAME "$W/pix2.raw" > "$W/frame1.raw"
  cp "$SRC" "$W/ct1.dcm"
  dcmodify -nb -q -m "(0028,0008)=1" -mf "(7fe0,0010)=$W/frame1.raw" -e "(5200,9230)[1]" -gst -gse -gin "$W/ct1.dcm"
  for i in $(seq -w 1 "$SMALL_N"); do
    f=$T/ct_$i.dcm
    cp "$W/ct1.dcm" "$f"
    dcmodify -nb -q -gin -m "(0020,0013)=$((10#$i))" "$f"
  done
  rm -rf "$OUT/small" && mv "$T" "$OUT/small"
fi

if [ $need_large = 1 ]; then
  echo "make-corpus: large (20 multi-frame instances)"
  T=$W/large && mkdir "$T"
  n=0
  for frames in $LARGE_FRAMES; do
    n=$((n + 1))
    pixels "$frames" "$W/pixN.raw"
    f=$(printf "%s/mf_%02d_%03dfr.dcm" "$T" "$n" "$frames")
    cp "$W/mf.dcm" "$f"
    dcmodify -nb -q -gin -m "(0028,0008)=$frames" -m "(0020,0013)=$n" -mf "(7fe0,0010)=$W/pixN.raw" "$f"
  done
  rm -f "$W/pixN.raw"
  rm -rf "$OUT/large" && mv "$T" "$OUT/large"
fi

if [ $need_huge = 1 ]; then
  echo "make-corpus: huge (1 instance of $HUGE_FRAMES frames, ~$((HUGE_FRAMES * FRAME / 1000000)) MB)"
  T=$W/huge && mkdir "$T"
  pixels "$HUGE_FRAMES" "$W/pixN.raw"
  f=$(printf "%s/mf_huge_%04dfr.dcm" "$T" "$HUGE_FRAMES")
  cp "$W/mf.dcm" "$f"
  dcmodify -nb -q -gin -m "(0028,0008)=$HUGE_FRAMES" -m "(0020,0013)=1000" -mf "(7fe0,0010)=$W/pixN.raw" "$f"
  rm -f "$W/pixN.raw"
  size=$(stat -c %s "$f")
  [ "$size" -gt $((HUGE_FRAMES * FRAME)) ] || { echo "make-corpus: $f is only $size bytes" >&2; exit 1; }
  rm -rf "$OUT/huge" && mv "$T" "$OUT/huge"
fi

chmod -R u+w "$OUT"
for s in small large huge; do
  echo "$s: $(find "$OUT/$s" -name '*.dcm' | wc -l) files, $(($(du -sb "$OUT/$s" | cut -f1) / 1000000)) MB"
done
