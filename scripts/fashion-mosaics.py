#!/usr/bin/env python3
"""Frames for the fine-tuning shift experiment: 112x112 grey mosaics of 4x4 Fashion-MNIST items,
content unlike the natural photos `denoise` was trained on.

usage: scripts/fashion-mosaics.py FASHION_MNIST_DIR OUT_DIR
writes OUT_DIR/stream (300 mosaics of training items) and OUT_DIR/held (20 of test items).
Fashion-MNIST: Zalando Research, MIT licence (see ../shared/data/MANIFEST.md).
"""
import gzip
import os
import sys

import numpy as np
from PIL import Image


def idx_images(path):
    with gzip.open(path) as f:
        data = f.read()
    n = int.from_bytes(data[4:8], "big")
    return np.frombuffer(data[16:], np.uint8).reshape(n, 28, 28)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    for name, file, count, prefix in [
        ("stream", "train-images-idx3-ubyte.gz", 300, "f"),
        ("held", "t10k-images-idx3-ubyte.gz", 20, "g"),
    ]:
        items = idx_images(os.path.join(src, file))
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for i in range(count):
            pick = rng.choice(len(items), 16, replace=False)
            rows = [np.hstack([items[pick[r * 4 + c]] for c in range(4)]) for r in range(4)]
            Image.fromarray(np.vstack(rows)).save(os.path.join(out, name, f"{prefix}{i:03d}.png"))


if __name__ == "__main__":
    main()
