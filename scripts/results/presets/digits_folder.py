"""Write scikit-learn's 8x8 digits as an image folder (one sub-folder per digit) upscaled to SIZE x SIZE RGB
PNGs: a stand-in, with no download, for timing the image-folder presets at their image size.

    python scripts/results/presets/digits_folder.py OUT_DIR SIZE
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

if __name__ == "__main__":
    out, size = Path(sys.argv[1]), int(sys.argv[2])
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
    print(f"wrote {len(digits.images)} images to {out}")
