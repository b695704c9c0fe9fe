"""Copydays-style attacks: the edits that turn an original into a near-duplicate copy.

Used twice: by bootstrap calibration (positive pairs) and by the benchmark generator. Every attack
takes an RGB PIL image and a numpy Generator, so a seed reproduces the exact same copies.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Attack = Callable[[Image.Image, np.random.Generator], Image.Image]


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop_area(img: Image.Image, rng: np.random.Generator, removed: float) -> Image.Image:
    """Keep a random window holding (1 - removed) of the area, aspect roughly kept."""
    w, h = img.size
    keep = max(0.05, 1.0 - removed)
    aspect = rng.uniform(0.8, 1.25)
    cw = int(np.clip(np.sqrt(keep * aspect) * w, 8, w))
    ch = int(np.clip(keep * w * h / max(cw, 1), 8, h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def attack_crop(img, rng):
    return crop_area(img, rng, rng.uniform(0.1, 0.8))


def attack_jpeg(img, rng):
    return jpeg(img, int(rng.choice([75, 50, 30, 20, 15, 10, 8, 5, 3])))


def attack_resize(img, rng):
    s = rng.uniform(0.3, 0.8)
    return img.resize((max(16, int(img.width * s)), max(16, int(img.height * s))), Image.Resampling.BILINEAR)


def attack_thumbnail(img, rng):
    t = img.copy()
    t.thumbnail((int(rng.integers(64, 128)),) * 2)
    return t


def attack_colour(img, rng):
    out = ImageEnhance.Color(img).enhance(rng.uniform(0.2, 2.0))
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(0.6, 1.5))


def attack_heavy_colour_blur(img, rng):
    arr = np.asarray(img, dtype=np.float32)
    tint = rng.uniform(0.6, 1.4, size=3)
    out = Image.fromarray(np.clip(arr * tint, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.5)))


def attack_grey_gamma(img, rng):
    g = ImageOps.grayscale(img)
    gamma = rng.uniform(0.5, 2.0)
    lut = [int(255 * (i / 255) ** gamma) for i in range(256)]
    return g.point(lut).convert("RGB")


def attack_blur(img, rng):
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0)))


def attack_rotate_crop(img, rng):
    angle = rng.uniform(-20, 20)
    rot = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    return crop_area(rot, rng, rng.uniform(0.15, 0.35))


def attack_print_scan(img, rng):
    """Perspective warp + blur + warm tint + noise + JPEG: a photo of a print."""
    w, h = img.size
    d = 0.08
    quad = [(rng.uniform(0, d) * w, rng.uniform(0, d) * h), (rng.uniform(0, d) * w, h - rng.uniform(0, d) * h),
            (w - rng.uniform(0, d) * w, h - rng.uniform(0, d) * h), (w - rng.uniform(0, d) * w, rng.uniform(0, d) * h)]
    out = img.transform((w, h), Image.Transform.QUAD, [c for p in quad for c in p], Image.Resampling.BILINEAR)
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    arr = np.asarray(out, dtype=np.float32) * np.array([1.08, 1.0, 0.88]) + rng.normal(0, 6, (h, w, 3))
    return jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), int(rng.integers(40, 80)))


def attack_text_overlay(img, rng):
    out = img.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(2, 5))):
        x, y = int(rng.integers(0, max(1, w - 60))), int(rng.integers(0, max(1, h - 20)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(5, 14))))
        draw.text((x, y), text, fill=colour, font_size=int(rng.integers(14, 40)))
    return out


def attack_meme_border(img, rng):
    """Padding with a plain canvas and caption bars, like meme templates and letterboxing."""
    w, h = img.size
    top, bottom = int(h * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.0, 0.25))
    side = int(w * rng.uniform(0.0, 0.15))
    colour = tuple(int(c) for c in rng.choice([[255, 255, 255], [0, 0, 0], [30, 30, 30]]))
    canvas = Image.new("RGB", (w + 2 * side, h + top + bottom), colour)
    canvas.paste(img, (side, top))
    draw = ImageDraw.Draw(canvas)
    fill = (0, 0, 0) if sum(colour) > 300 else (255, 255, 255)
    draw.text((side + 10, max(2, top // 4)), "WHEN THE COPY", fill=fill, font_size=max(12, top // 3))
    return canvas


def attack_crop_resize_jpeg(img, rng):
    out = crop_area(img, rng, rng.uniform(0.2, 0.5))
    out = attack_resize(out, rng)
    return jpeg(out, int(rng.integers(20, 60)))


def attack_mirror_crop(img, rng):
    return crop_area(ImageOps.mirror(img), rng, rng.uniform(0.1, 0.3))


def overlay_image(img: Image.Image, other: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paste a piece of another (non-indexed) picture over a corner of ``img``."""
    out = img.copy()
    w, h = out.size
    s = rng.uniform(0.2, 0.35)
    patch = other.convert("RGB").resize((max(8, int(w * s)), max(8, int(h * s))))
    out.paste(patch, (int(rng.integers(0, w - patch.width + 1)), int(rng.integers(0, h - patch.height + 1))))
    return out


def same_scene_pair(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """Two views of one scene that share no pixels: disjoint side-by-side windows (a gap of >= 10 %
    of the width), the second re-exposed and recompressed. Near, but not duplicates: same colours,
    light and subject, so global descriptors agree while nothing matches geometrically."""
    w, h = img.size
    gap = int(w * rng.uniform(0.1, 0.2))
    cut = int(w * rng.uniform(0.4, 0.5))
    top, bottom = int(h * rng.uniform(0.0, 0.1)), h - int(h * rng.uniform(0.0, 0.1))
    left = img.crop((0, top, max(8, cut - gap // 2), bottom))
    right = img.crop((min(w - 8, cut + gap // 2), top, w, bottom))
    right = ImageEnhance.Brightness(right).enhance(rng.uniform(0.85, 1.15))
    return left, jpeg(right, int(rng.integers(60, 90)))


# family -> attacks (a family is what the benchmark reports separately)
def attack_rotate90(img, rng):
    """A right-angle rotation (lost EXIF orientation, phone re-uploads), mirrored half the time."""
    k = int(rng.integers(1, 4))
    out = img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][k - 1])
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return jpeg(out, 85)


def attack_tight_crop(img, rng):
    """A window keeping 5-15 % of the frame (a detail cut out and reposted)."""
    return jpeg(crop_area(img, rng, rng.uniform(0.85, 0.95)), 85)


FAMILIES: dict[str, dict[str, Attack]] = {
    "crop": {"crop": attack_crop},
    "jpeg": {"jpeg": attack_jpeg},
    "strong": {"rotate_crop": attack_rotate_crop, "print_scan": attack_print_scan,
               "text_overlay": attack_text_overlay, "meme_border": attack_meme_border,
               "grey_gamma": attack_grey_gamma, "thumbnail": attack_thumbnail,
               "colour_blur": attack_heavy_colour_blur, "crop_resize_jpeg": attack_crop_resize_jpeg,
               "mirror_crop": attack_mirror_crop},
}
# families added in round 2, drawn from a generator of their own so the families above stay
# identical for a given seed (their figures remain comparable with earlier runs)
EXTRA_FAMILIES: dict[str, dict[str, Attack]] = {
    "rotation": {"rotate90": attack_rotate90},
    "tight_crop": {"tight_crop": attack_tight_crop},
}


def attack_picture_in_picture(img: Image.Image, pool: Sequence[Image.Image], rng: np.random.Generator) -> Image.Image:
    """The original shrunk to 45-60 % of a never-indexed photo's frame and pasted into it: a
    screenshot of a post, a photo on a web page, a frame in a video still."""
    canvas = pool[int(rng.integers(len(pool)))].resize((640, 480))
    w, h = img.size
    scale = rng.uniform(0.45, 0.6) * min(640 / w, 480 / h)
    inner = img.resize((max(8, int(w * scale)), max(8, int(h * scale))))
    canvas.paste(inner, (int(rng.integers(0, 640 - inner.width + 1)), int(rng.integers(0, 480 - inner.height + 1))))
    return jpeg(canvas, int(rng.integers(70, 90)))


def attack_collage(img: Image.Image, pool: Sequence[Image.Image], rng: np.random.Generator) -> Image.Image:
    """A 2x2 grid: the original (squashed to a quarter of the frame) beside three never-indexed
    photos, in a random cell."""
    tiles = [img] + [pool[int(k)] for k in rng.choice(len(pool), size=3, replace=len(pool) < 3)]
    canvas = Image.new("RGB", (640, 480))
    for cell, tile in zip(rng.permutation(4), tiles, strict=True):
        canvas.paste(tile.resize((320, 240)), (int(cell % 2) * 320, int(cell // 2) * 240))
    return jpeg(canvas, int(rng.integers(70, 90)))


def attack_collage_letterboxed(img: Image.Image, pool: Sequence[Image.Image], rng: np.random.Generator) -> Image.Image:
    """A 2x2 grid as collage makers that keep each photo's shape lay it out: every photo fitted
    inside its cell on white or black, the original in a random cell; half of them on a grey
    canvas border 16-40 px wide."""
    from PIL import ImageOps

    frame = int(rng.integers(16, 41)) if rng.random() < 0.5 else 0
    cell_w, cell_h = (640 - 2 * frame) // 2, (480 - 2 * frame) // 2
    background = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
    canvas = Image.new("RGB", (640, 480), (200, 200, 200))
    tiles = [img] + [pool[int(k)] for k in rng.choice(len(pool), size=3, replace=len(pool) < 3)]
    for cell, tile in zip(rng.permutation(4), tiles, strict=True):
        inner = ImageOps.contain(tile.convert("RGB"), (cell_w, cell_h))
        box = Image.new("RGB", (cell_w, cell_h), background)
        box.paste(inner, ((cell_w - inner.width) // 2, (cell_h - inner.height) // 2))
        canvas.paste(box, (frame + int(cell % 2) * cell_w, frame + int(cell // 2) * cell_h))
    return jpeg(canvas, int(rng.integers(70, 90)))


PAIR_LAYOUTS = ("squashed", "letterboxed", "same_height")


def attack_pair(img: Image.Image, pool: Sequence[Image.Image], rng: np.random.Generator,
                layout: str | None = None) -> Image.Image:
    """Two pictures side by side (or, a third of the time, one above the other): the original
    and a never-indexed photo, the original first or second, laid out as two-photo posts and
    before/after pairs are -- each squashed into an equal cell, fitted in it on white or black, or
    both scaled to the same height (width when stacked) keeping their shapes, so the seam is
    where their shapes put it, not always at the middle. ``layout``: one of
    :data:`PAIR_LAYOUTS`, else drawn at random."""
    from PIL import ImageOps

    stacked = rng.random() < 1 / 3
    layout = layout or PAIR_LAYOUTS[int(rng.integers(len(PAIR_LAYOUTS)))]
    other = pool[int(rng.integers(len(pool)))].convert("RGB")
    tiles = [img.convert("RGB"), other] if rng.random() < 0.5 else [other, img.convert("RGB")]
    if layout == "same_height":
        side = 320
        fitted = [t.resize((max(8, round(t.width * side / t.height)), side)) if not stacked
                  else t.resize((side, max(8, round(t.height * side / t.width)))) for t in tiles]
        size = ((sum(t.width for t in fitted), side) if not stacked else (side, sum(t.height for t in fitted)))
        canvas = Image.new("RGB", size)
        offset = 0
        for t in fitted:
            canvas.paste(t, (offset, 0) if not stacked else (0, offset))
            offset += t.width if not stacked else t.height
        return jpeg(canvas, int(rng.integers(70, 90)))
    cell = (320, 240)
    background = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
    canvas = Image.new("RGB", (640, 240) if not stacked else (320, 480))
    for k, t in enumerate(tiles):
        if layout == "letterboxed":
            box, inner = Image.new("RGB", cell, background), ImageOps.contain(t, cell)
            box.paste(inner, ((cell[0] - inner.width) // 2, (cell[1] - inner.height) // 2))
        else:
            box = t.resize(cell)
        canvas.paste(box, (k * cell[0], 0) if not stacked else (0, k * cell[1]))
    return jpeg(canvas, int(rng.integers(70, 90)))


# families made only on request (`ndid bench make --with NAME`): each copy holds the original as
# a part of a bigger picture, made of never-indexed photos (``pool``); not in the default set, so
# that its figures stay comparable with earlier runs
CompositeAttack = Callable[[Image.Image, Sequence[Image.Image], np.random.Generator], Image.Image]
OPTIONAL_FAMILIES: dict[str, dict[str, CompositeAttack]] = {
    "picture_in_picture": {"picture_in_picture": attack_picture_in_picture},
    "collage": {"collage": attack_collage},
    "collage_letterboxed": {"collage_letterboxed": attack_collage_letterboxed},
    "pair": {"pair": attack_pair},
}

# the milder mix used for bootstrap calibration positives
BOOTSTRAP_ATTACKS: dict[str, Attack] = {
    "crop": attack_crop, "resize": attack_resize, "jpeg": attack_jpeg, "colour": attack_colour,
    "blur": attack_blur, "rotate_crop": attack_rotate_crop, "text_overlay": attack_text_overlay,
    "meme_border": attack_meme_border, "crop_resize_jpeg": attack_crop_resize_jpeg,
    "grey_gamma": attack_grey_gamma, "print_scan": attack_print_scan,
}
