"""An ImageNet-shaped test folder from a small-image ImageFolder: PER_CLASS images of each class,
upscaled (bicubic) to a seeded random size with shorter side 300-500 and aspect 3:4 to 4:3, saved
as quality-90 JPEGs. Their content is smooth (upscaled), so decode is somewhat cheaper than on
photographs of the same size; both decoders see the same files.

    python3 benchmarks/make_large_jpegs.py SRC_FOLDER OUT_FOLDER [PER_CLASS]
"""
import os
import random
import sys

from PIL import Image

src, out = sys.argv[1], sys.argv[2]
per_class = int(sys.argv[3]) if len(sys.argv) > 3 else 100
rng = random.Random(0)
tmp = out + ".tmp"
for c in sorted(os.listdir(src)):
    if not os.path.isdir(os.path.join(src, c)):
        continue
    os.makedirs(os.path.join(tmp, c), exist_ok=True)
    for f in sorted(os.listdir(os.path.join(src, c)))[:per_class]:
        short, ratio = rng.randint(300, 500), rng.uniform(0.75, 4 / 3)
        size = (short, int(short * ratio)) if ratio > 1 else (int(short / ratio), short)
        with Image.open(os.path.join(src, c, f)) as im:
            im.convert("RGB").resize(size, Image.BICUBIC).save(
                os.path.join(tmp, c, os.path.splitext(f)[0] + ".jpg"), quality=90)
os.rename(tmp, out)
