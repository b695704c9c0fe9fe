import io

import numpy as np
import pytest
from PIL import Image

from ndid_tasks.images import ImageDecodeError, load_image
from tests.conftest import jpeg_bytes, make_noise_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is a text file, not a picture\n" * 10, "not_an_image"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not_an_image"),
])
def test_non_images_get_typed_errors(data, reason):
    with pytest.raises(ImageDecodeError) as err:
        load_image(data, "x")
    assert err.value.reason == reason


def test_truncated_jpeg_is_typed():
    data = jpeg_bytes(make_noise_image(1))
    with pytest.raises(ImageDecodeError) as err:
        load_image(data[: len(data) // 2], "x")
    assert err.value.reason in ("truncated", "corrupt")


def test_corrupt_png_is_typed():
    data = bytearray(encode(make_noise_image(2), "PNG"))
    data[60:200] = b"\x00" * 140  # smash the IDAT stream
    with pytest.raises(ImageDecodeError) as err:
        load_image(bytes(data), "x")
    assert err.value.reason in ("corrupt", "truncated")


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (5000, 5000)), "PNG")  # small file, 25 Mpx
    with pytest.raises(ImageDecodeError) as err:
        load_image(data, "x", max_pixels=10_000_000)
    assert err.value.reason == "decompression_bomb"


def test_too_many_bytes_is_refused():
    with pytest.raises(ImageDecodeError) as err:
        load_image(b"\xff" * 2000, "x", max_bytes=1000)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "I;16", "1"])
def test_odd_modes_become_rgb(mode):
    base = make_noise_image(3)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 200)
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "1" else "BMP"
    loaded = load_image(encode(img, fmt), "x")
    assert loaded.image.mode == "RGB"
    assert loaded.width == 320 and loaded.height == 240


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (50, 40), (255, 0, 0, 0))  # fully transparent red
    loaded = load_image(encode(img, "PNG"), "x")
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (60, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    loaded = load_image(buf.getvalue(), "x")
    r, _g, b = loaded.image.getpixel((5, 5))
    assert r > 200 and b < 50
    assert any("animated" in n for n in loaded.notes)


def test_exif_orientation_is_applied():
    img = make_noise_image(4, size=(200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_image(encode(img, "JPEG", exif=exif), "x")
    assert (loaded.width, loaded.height) == (100, 200)
    assert loaded.image.size[0] < loaded.image.size[1]


def test_large_jpeg_uses_draft_and_keeps_original_size():
    img = make_noise_image(5, size=(2400, 1600))
    loaded = load_image(jpeg_bytes(img), "x")
    assert (loaded.width, loaded.height) == (2400, 1600)
    assert max(loaded.image.size) <= 512


def test_sha256_is_of_the_bytes():
    import hashlib

    data = jpeg_bytes(make_noise_image(6))
    assert load_image(data, "x").sha256 == hashlib.sha256(data).hexdigest()


def test_flat_borders_are_trimmed_for_descriptors(photos):
    """A meme canvas with a caption is cut away; a plain photo keeps its whole frame."""
    from ndid_tasks import augment
    from ndid_tasks.images import content_box, load_image

    photo = photos["chelsea"]
    rng = np.random.default_rng(1)
    meme = augment.attack_meme_border(photo, rng)
    loaded = load_image(jpeg_bytes(meme, 90), "meme")
    left, top, right, bottom = loaded.box
    scale = loaded.image.width / meme.width
    print(f"meme {meme.size} -> box {loaded.box} of {loaded.image.size}; photo {photo.size}")
    assert abs((right - left) - photo.width * scale) <= 0.05 * loaded.image.width
    assert abs((bottom - top) - photo.height * scale) <= 0.05 * loaded.image.height
    assert loaded.content.size == (right - left, bottom - top)
    plain = load_image(jpeg_bytes(photo), "plain")
    assert plain.box == (0, 0, *plain.image.size) and plain.content is plain.image
    assert content_box(photo.resize((10, 10))) == (0, 0, 10, 10)  # too small to judge


def test_a_photos_own_sky_is_no_border_even_when_jpeg_makes_it_flat_blocks(photos):
    """At JPEG's lowest qualities a sky or a wall becomes flat 8x8 blocks, which the line rule
    alone read as a border (the astronaut's top, the cat's, the coins' frame were cut from the
    copy and not from its original). A side is trimmed only where its outermost line is flat
    almost throughout, as a canvas or a bar is -- which a meme canvas saved at quality 2 still is.
    The rule switched off (``edge_share=0``) trims those copies again, so this test sees it. (A sky
    flat to its edge still goes: the untrimmed view catches that, see test_signals.)"""
    from ndid_tasks import augment
    from ndid_tasks.images import content_box

    for name in ("astronaut", "chelsea", "coins"):
        blocky = load_image(jpeg_bytes(photos[name], 2), name)
        assert blocky.box == (0, 0, *blocky.image.size), name
        assert content_box(blocky.image, edge_share=0) != blocky.box, name
    meme = augment.attack_meme_border(photos["chelsea"], np.random.default_rng(3))
    loaded = load_image(jpeg_bytes(meme, 2), "meme")
    _, top, _, bottom = loaded.box
    assert top > 0 and abs((bottom - top) - photos["chelsea"].height * loaded.image.width / meme.width) <= 0.05 * loaded.image.height


def test_rotation_and_tight_crop_attacks():
    import numpy as np

    from ndid_tasks import augment

    img = make_noise_image(3, size=(300, 200))
    rng = np.random.default_rng(0)
    sizes = {augment.attack_rotate90(img, rng).size for _ in range(12)}
    assert sizes <= {(300, 200), (200, 300)} and (200, 300) in sizes  # right angles only
    for _ in range(10):
        w, h = augment.attack_tight_crop(img, rng).size
        assert w * h <= 0.16 * 300 * 200  # at most ~15 % of the frame kept
