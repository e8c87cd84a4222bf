"""Draws the caregiver page's app icons (runtime/static/*.png) with Pillow; run once after changing the design:

    .venv/bin/python docs/make_icons.py

A white speech bubble holding a sound wave, on the page's dark blue: "a voice, heard". Drawn at 4x and scaled
down for smooth edges. The maskable icon keeps everything inside the central 60% (Android crops to a circle
or squircle); the others fill a rounded square; Apple's touch icon is a full square (iOS rounds it).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

BLUE = (11, 61, 145, 255)  # --accent in style.css
WHITE = (255, 255, 255, 255)
STATIC = Path(__file__).resolve().parents[1] / "runtime" / "static"
SCALE = 4


def icon(size: int, content: float, background: str) -> Image.Image:
    """``content``: the share of the side the bubble spans; ``background``: "rounded" | "full"."""
    big = size * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if background == "rounded":
        draw.rounded_rectangle((0, 0, big - 1, big - 1), radius=big * 0.22, fill=BLUE)
    else:
        draw.rectangle((0, 0, big, big), fill=BLUE)
    side = big * content
    left, top = (big - side) / 2, (big - side * 0.86) / 2
    right, bottom = left + side, top + side * 0.72
    draw.rounded_rectangle((left, top, right, bottom), radius=side * 0.2, fill=WHITE)
    # the bubble's tail, bottom left
    tail_x = left + side * 0.22
    draw.polygon(
        [
            (tail_x, bottom - 2),
            (tail_x + side * 0.2, bottom - 2),
            (tail_x - side * 0.04, bottom + side * 0.16),
        ],
        fill=WHITE,
    )
    # a sound wave: seven bars, tallest in the middle
    heights = (0.18, 0.34, 0.5, 0.62, 0.5, 0.34, 0.18)
    bar = side * 0.075
    gap = side * 0.04
    total = len(heights) * bar + (len(heights) - 1) * gap
    x = left + (side - total) / 2
    middle = (top + bottom) / 2
    for h in heights:
        half = side * 0.72 * h / 2
        draw.rounded_rectangle((x, middle - half, x + bar, middle + half), radius=bar / 2, fill=BLUE)
        x += bar + gap
    return image.resize((size, size), Image.LANCZOS)


def main() -> None:
    outputs = {
        "icon-192.png": icon(192, 0.66, "rounded"),
        "icon-512.png": icon(512, 0.66, "rounded"),
        "icon-maskable-512.png": icon(512, 0.56, "full"),
        "apple-touch-icon.png": icon(180, 0.66, "full").convert("RGB"),  # iOS wants no transparency
    }
    for name, image in outputs.items():
        image.save(STATIC / name, optimize=True)
        print(f"{STATIC / name}: {(STATIC / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
