"""Safe decoding of untrusted image bytes into RGB pictures.

Everything that can go wrong with a user upload becomes one typed error, :class:`ImageDecodeError`,
with a machine-readable ``reason`` -- so a batch records the failure and moves on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Long side the signals ever need: pHash works at 32x32, the CNNs at 224. JPEG draft mode
# decodes at 1/2, 1/4 or 1/8 scale directly, which is several times faster for big photos.
WORKING_SIZE = 512
# bytes a decoder may hold for one image (see decoded_bytes); NDID_MAX_DECODE_BYTES
MAX_DECODE_BYTES = 256 * 1024 * 1024

ERROR_REASONS = ("empty", "too_large", "not_an_image", "unsupported_format", "corrupt",
                 "truncated", "decompression_bomb")
# reasons an object gets besides decoding: unreadable from its store, key longer than an index id
OBJECT_ERROR_REASONS = ("unreadable", "key_too_long", "undecodable")


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. ``reason`` is one of ERROR_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class LoadedImage:
    """An image ready for the signals: RGB pixels plus facts about the original bytes."""

    image_id: str
    sha256: str
    image: Image.Image  # RGB, long side <= WORKING_SIZE (aspect kept)
    width: int  # of the original, after EXIF orientation
    height: int
    format: str
    num_bytes: int
    notes: list[str] = field(default_factory=list)  # e.g. "cmyk->rgb", "animated: first frame"
    box: tuple[int, int, int, int] | None = None  # content without flat borders (see content_box)

    @property
    def content(self) -> Image.Image:
        """The picture without letterbox / meme-canvas borders: what global descriptors look at."""
        if self.box is None or self.box == (0, 0, *self.image.size):
            return self.image
        return self.image.crop(self.box)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_image(data: bytes, image_id: str, max_pixels: int = 80_000_000,
               max_bytes: int = 64 * 1024 * 1024, working_size: int = WORKING_SIZE,
               max_decode_bytes: int = MAX_DECODE_BYTES) -> LoadedImage:
    """Decode ``data`` safely; raise ImageDecodeError with a reason for anything unusable.

    Memory is bounded before any pixel is decoded: the header's size and mode give the bytes the
    decoder will hold (:func:`decoded_bytes`; JPEGs are first drafted down towards
    ``working_size``), and more than ``max_decode_bytes`` is refused as ``too_large``. The decoded
    picture is shrunk by an integer factor before any conversion, so the peak per image stays near
    1.5 x ``max_decode_bytes`` (measured 1.43 x for an 8900x8900 16-bit PNG).
    """
    if not data:
        raise ImageDecodeError("empty", "zero-byte object")
    if len(data) > max_bytes:
        raise ImageDecodeError("too_large", f"{len(data)} bytes exceeds the {max_bytes}-byte limit")
    digest = sha256_hex(data)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError("decompression_bomb",
                                       f"{width}x{height} = {width * height} pixels exceeds {max_pixels}")
            if getattr(img, "is_animated", False):
                img.seek(0)
                notes.append(f"animated ({getattr(img, 'n_frames', '?')} frames): first frame used")
            if fmt == "JPEG":
                # draft() only ever decodes at >= the requested size, so quality is unaffected
                img.draft("RGB", (working_size, working_size))
            need = decoded_bytes(img.mode, *img.size)
            if need > max_decode_bytes:
                raise ImageDecodeError("too_large", f"{img.mode} {img.size[0]}x{img.size[1]} needs {need} bytes "
                                                    f"to decode, over the {max_decode_bytes}-byte budget")
            img.load()
            orientation = _exif_orientation(img)  # after load(): PNG's getexif() would load (and swallow errors)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", str(exc)) from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "no image format recognises these bytes") from exc
    except MemoryError as exc:
        raise ImageDecodeError("too_large", "out of memory while decoding") from exc
    except OSError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise ImageDecodeError(reason, text) from exc
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, struct_error()) as exc:
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {exc}") from exc

    try:
        img = shrink(img, working_size, notes)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        img = to_rgb(img, notes)
    except MemoryError as exc:
        raise ImageDecodeError("too_large", "out of memory while converting") from exc
    except (OSError, ValueError) as exc:  # e.g. a mode Pillow cannot convert
        raise ImageDecodeError("unsupported_format", f"{type(exc).__name__}: {exc}") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    img.thumbnail((working_size, working_size), Image.Resampling.BILINEAR)
    box = content_box(img)
    if box != (0, 0, *img.size):
        notes.append(f"flat borders trimmed to {box}")
    return LoadedImage(image_id=image_id, sha256=digest, image=img, width=width, height=height,
                       format=fmt, num_bytes=len(data), notes=notes, box=box)


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes Pillow (and the conversion after it) holds for a decoded ``mode`` picture: Pillow
    keeps every multi-band mode at 4 bytes a pixel; 16-bit greyscale is copied once to numpy;
    palette images are expanded to RGB(A)."""
    pixels = width * height
    if mode in ("1", "L"):
        return pixels
    if mode.startswith("I;16"):
        return 4 * pixels
    if mode == "P":
        return 5 * pixels
    return 4 * pixels


def shrink(img: Image.Image, working_size: int, notes: list[str] | None = None) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the long side >= ``working_size``, before
    any mode conversion (so converting a huge alpha or 16-bit picture never happens at full size)."""
    factor = max(img.size) // working_size
    if factor < 2:
        return img
    if img.mode.startswith("I;16"):
        import numpy as np

        arr = np.asarray(img)
        h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
        small = arr[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)
        if notes is not None:
            notes.append(f"reduced 1/{factor}")
        return Image.fromarray(small, "F")
    if img.mode in ("1", "P"):
        img = img.convert("RGBA" if "transparency" in img.info else ("L" if img.mode == "1" else "RGB"))
    if notes is not None:
        notes.append(f"reduced 1/{factor}")
    return img.reduce(factor)


# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        return 1


def content_box(img: Image.Image, tolerance: int = 2, flat_share: float = 0.4, max_trim: float = 0.35,
                min_trim: float = 0.04, edge_share: float = 0.9) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) without flat borders: padded copies (letterboxing, meme canvases
    with captions) then look like their original to pHash and ResNet.

    From each edge, lines are trimmed while at least ``flat_share`` of their pixels are within
    ``tolerance`` grey levels of that edge's colour (caption text leaves much of a line flat). At
    most ``max_trim`` of a side goes; trims under ``min_trim`` are ignored (a photo's own edge).
    Measured on 120 dev photos with a meme canvas added: 88 % trimmed to the photo.

    A side is trimmed only if its outermost line is flat almost throughout (``edge_share``): a
    canvas or a bar starts with a clean line, a photo's own sky or field does not. Without that
    rule 10 % of plain photos were trimmed, and a third of the JPEG copies, whose low qualities
    turn a sky into flat blocks: a copy then trimmed what its original did not and lost its pHash
    candidate. Measured (docs/analysis/content_box_edge_probe.py): the outermost line of a trimmed
    meme canvas is >= 0.9 flat on 99-100 % of sides (also at JPEG quality 1-7), of a photo's own
    trimmed side on 9-25 % (median 0.63-0.74).
    """
    import numpy as np

    grey = np.asarray(img.convert("L"), dtype=np.int16)
    h, w = grey.shape
    if h < 16 or w < 16:
        return (0, 0, w, h)

    def depth(lines: np.ndarray) -> int:
        colour = int(np.median(lines[0]))
        if np.mean(np.abs(lines[0] - colour) <= tolerance) < edge_share:
            return 0  # (most sides: the rest is not looked at)
        limit = int(len(lines) * max_trim)
        flat = np.mean(np.abs(lines[:limit] - colour) <= tolerance, axis=1) >= flat_share
        n = int(np.argmin(flat)) if not flat.all() else limit
        return n if n >= len(lines) * min_trim else 0

    top, bottom = depth(grey), depth(grey[::-1])
    left, right = depth(grey.T), depth(grey.T[::-1])
    return (left, top, w - right, h - bottom)


def to_rgb(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Any mode -> 8-bit RGB. Transparent pixels are composited on white (how viewers show them)."""
    notes = [] if notes is None else notes
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette->rgb")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit or float greyscale (F also comes from shrink() of a 16-bit picture): scale to
        # 8 bits by the actual range, not by clipping
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        notes.append(f"{mode}->8-bit")
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype("uint8"), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        notes.append("alpha composited on white")
        return background
    if mode == "CMYK":
        notes.append("cmyk->rgb")
    elif mode not in ("L", "1"):
        notes.append(f"{mode}->rgb")
    return img.convert("RGB")


def struct_error():
    import struct

    return struct.error


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The image files under ``folder`` (by suffix, recursively, sorted), at most ``limit``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files
