"""A generated stand-in for Fruits-360: drawn fruit in class folders, deterministic per seed.

    python -m orchard.samples OUT_DIR [--per-class N] [--seed S]

Each class has its own shape, colour and texture, drawn on a white background with random
position, size, rotation and lighting, so classes are distinguishable and images are not copies.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Fruit:
    """How one class is drawn."""

    name: str
    colour: tuple[int, int, int]
    aspect: float  # height / width of the body
    spots: tuple[int, int, int] | None = None
    stem: bool = True
    fmt: str = "jpg"


CLASSES = (
    Fruit("Apple Golden 1", (222, 196, 60), 0.95),
    Fruit("Apple Red 2", (180, 30, 40), 0.9, spots=(230, 200, 90)),
    Fruit("Banana Lady Finger", (240, 220, 80), 0.35, stem=False),
    Fruit("Kiwi", (120, 90, 50), 0.8, spots=(90, 60, 30), stem=False),
    Fruit("Lemon Meyer", (250, 235, 70), 0.75, stem=False, fmt="png"),
    Fruit("Plum", (90, 30, 90), 1.0),
)


def draw_fruit(fruit: Fruit, rng: random.Random, size: int = 100) -> Image.Image:
    """One image of `fruit`: body, optional spots and stem, rotated, lit, slightly blurred."""
    canvas = Image.new("RGB", (size * 2, size * 2), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    centre = size + rng.randint(-size // 8, size // 8)
    width = size * rng.uniform(0.55, 0.75)
    height = width * fruit.aspect * rng.uniform(0.9, 1.1)
    shade = rng.uniform(0.8, 1.15)
    body = tuple(min(255, int(c * shade)) for c in fruit.colour)
    box = (centre - width, centre - height, centre + width, centre + height)
    draw.ellipse(box, fill=body)
    # A highlight makes the lighting direction vary between images.
    hx, hy = centre - width * rng.uniform(0.2, 0.5), centre - height * rng.uniform(0.2, 0.5)
    hr = width * 0.25
    light = tuple(min(255, int(c * 1.25) + 20) for c in body)
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=light)
    if fruit.spots:
        for _ in range(rng.randint(15, 30)):
            angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.85)
            sx = centre + math.cos(angle) * width * radius
            sy = centre + math.sin(angle) * height * radius
            r = rng.uniform(1.5, 4)
            draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=fruit.spots)
    if fruit.stem:
        draw.line((centre, centre - height, centre + 6, centre - height - 18), fill=(80, 50, 20), width=5)
    rotated = canvas.rotate(
        rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)
    )
    image = rotated.resize((size, size), Image.Resampling.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def generate(out_dir: Path, per_class: int = 8, seed: int = 0) -> list[Path]:
    """Write `per_class` images of every class under `out_dir/<class name>/`; returns their paths."""
    rng = random.Random(seed)
    written = []
    for fruit in CLASSES:
        folder = out_dir / fruit.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i}_100.{fruit.fmt}"
            image = draw_fruit(fruit, rng)
            if fruit.fmt == "jpg":
                image.save(path, quality=92)
            else:
                image.save(path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: generate a sample set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate(args.out_dir, args.per_class, args.seed)
    print(f"wrote {len(paths)} images in {len(CLASSES)} classes to {args.out_dir}")


if __name__ == "__main__":
    main()
