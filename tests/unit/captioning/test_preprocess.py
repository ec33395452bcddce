"""Request bytes -> tensor: every bad upload gets the right error class and a message naming it."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image, ImageFile

from mmserve.plugins.captioning.data import make_example, scene_vocabulary
from mmserve.plugins.captioning.model import Captioner, CaptionerConfig, EncoderConfig
from mmserve.plugins.captioning.preprocess import image_bytes_to_tensor
from mmserve.plugins.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from mmserve.plugins.task import InputLimits

LIMITS = InputLimits(max_upload_bytes=200_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def model() -> Captioner:
    return Captioner(CaptionerConfig(EncoderConfig(image_size=(48, 112), stage_widths=(8, 8))), scene_vocabulary())


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_supported_formats_become_normalised_model_tensors(model, fmt, mime):
    image = Image.new("RGB", (300, 120), (255, 0, 0))
    for content_type in (mime, None, "application/octet-stream"):
        tensor = image_bytes_to_tensor(_encode(image, fmt), content_type, model, LIMITS)
        assert tensor.shape == (3, 48, 112) and tensor.dtype == torch.float32
        # (255 / 255 - 0.5) / 0.5 = 1 for red, -1 for green and blue (JPEG/WebP are lossy).
        assert tensor[0].mean() > 0.9 and tensor[1:].mean() < -0.8


def test_greyscale_and_alpha_are_converted_to_rgb(model):
    for mode in ("L", "RGBA", "P"):
        tensor = image_bytes_to_tensor(_encode(Image.new(mode, (20, 10)), "PNG"), "image/png", model, LIMITS)
        assert tensor.shape == (3, 48, 112)


def test_real_scene_round_trips(model):
    tensor = image_bytes_to_tensor(make_example(0).png, "image/png", model, LIMITS)
    assert tensor.shape == (3, 48, 112) and tensor.min() >= -1 and tensor.max() <= 1


def test_empty_body_is_an_input_error(model):
    with pytest.raises(InputError, match="empty") as info:
        image_bytes_to_tensor(b"", "image/png", model, LIMITS)
    assert info.value.status_code == 400


def test_truncated_png_is_an_input_error(model):
    png = make_example(1).png
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        image_bytes_to_tensor(png[: len(png) // 2], "image/png", model, LIMITS)
    assert type(info.value) is InputError and info.value.status_code == 400


def test_garbage_after_a_png_signature_is_corrupt(model):
    with pytest.raises(InputError, match="truncated or corrupt"):
        image_bytes_to_tensor(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png", model, LIMITS)


def test_truncated_jpeg_is_an_input_error(model):
    jpeg = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(InputError, match="truncated or corrupt"):
        image_bytes_to_tensor(jpeg[:200], "image/jpeg", model, LIMITS)


def test_gif_is_unsupported_whatever_it_claims(model):
    gif = _encode(Image.new("RGB", (8, 8)), "GIF")
    with pytest.raises(UnsupportedMediaType, match="image/gif") as info:
        image_bytes_to_tensor(gif, "image/gif", model, LIMITS)
    assert info.value.status_code == 415
    # Mislabelled as PNG, the bytes still give it away.
    with pytest.raises(UnsupportedMediaType, match="image/gif"):
        image_bytes_to_tensor(gif, "image/png", model, LIMITS)


def test_text_is_unsupported(model):
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        image_bytes_to_tensor(b"hello, world", "text/plain", model, LIMITS)
    with pytest.raises(UnsupportedMediaType, match="text/plain data starting 'hello"):
        image_bytes_to_tensor(b"hello, world", None, model, LIMITS)


def test_unknown_binary_is_unsupported(model):
    with pytest.raises(UnsupportedMediaType, match="unrecognised binary data starting 00 ff"):
        image_bytes_to_tensor(bytes([0, 255, 1, 254, 0x80, 0x81]), None, model, LIMITS)


def test_upload_over_the_byte_limit_is_413(model):
    with pytest.raises(PayloadTooLarge, match="over the limit of 200000 bytes") as info:
        image_bytes_to_tensor(b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "image/png", model, LIMITS)
    assert info.value.status_code == 413


def test_too_many_pixels_is_413_before_decoding(model, monkeypatch):
    huge = _encode(Image.new("L", (2000, 1000)), "PNG")  # 2 Mpx, a few KB compressed
    assert len(huge) < LIMITS.max_upload_bytes

    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the pixel limit was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "convert", no_decode)
    with pytest.raises(PayloadTooLarge, match="2000x1000 = 2000000 pixels, over the limit of 1000000 pixels"):
        image_bytes_to_tensor(huge, "image/png", model, LIMITS)
