"""Generate the corrupt-input corpus: images (captioning), v2 tensors, numeric series, JSON
bodies, and audio (speech, OpenAI transcription), video (action) and MIDI (music) from
media_cases.py.

Nothing here is committed as binary: every case is built from a few valid files made with
Pillow at run time. `python -m tests.corpus.generate OUT_DIR` writes one file per case plus
`manifest.json` (route, headers, expected statuses, a fragment the error must contain);
tests/corpus/test_corpus.py sends every case to an in-process server.

Each case says what a correct server answers: a 4xx from `statuses`, with `fragment` in the
`{"error": ...}` message, so the client learns what is wrong.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MAX_JSON_BYTES = 100 * 1024  # the corpus server's max_json_bytes (under its body limit, so the JSON limit answers)
MAX_UPLOAD_BYTES = 128 * 1024


@dataclass
class Case:
    name: str
    modality: str  # image | v2 | series | json | audio | video | midi
    route: str
    body: bytes
    headers: dict[str, str]
    statuses: tuple[int, ...]
    fragment: str  # lower-case text the error message must contain
    multipart: dict[str, str] = field(default_factory=dict)  # field -> content type, for form uploads
    fields: dict[str, str] = field(default_factory=dict)  # other form fields sent with a multipart upload


def _image(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header claiming width x height, with one tiny compressed row: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))  # fmt: skip


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(_image("JPEG"))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "Pillow wrote no baseline SOF0 marker"
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def image_cases() -> list[Case]:
    png, jpeg, webp = _image("PNG"), _image("JPEG"), _image("WEBP")
    garbage = bytes(np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8))
    cases = [
        ("empty", b"", "image/png", (400,), "empty"),
        ("empty-undeclared", b"", "application/octet-stream", (400,), "empty"),
        ("png-magic-only", png[:8], "image/png", (400,), "truncated or corrupt"),
        ("png-header-only", png[:33], "image/png", (400,), "truncated or corrupt"),
        ("png-magic-then-garbage", png[:8] + garbage, "image/png", (400,), "truncated or corrupt"),
        ("jpeg-magic-then-garbage", jpeg[:4] + garbage, "image/jpeg", (400,), "truncated or corrupt"),
        ("webp-magic-then-garbage", webp[:12] + garbage, "image/webp", (400,), "truncated or corrupt"),
        ("png-declared-as-wav", png, "audio/wav", (415,), "not supported"),
        ("text-declared-as-png", b"hello, I am not an image", "image/png", (415,), "not a supported image"),
        ("gif-declared-as-png", b"GIF89a" + garbage, "image/png", (415,), "not a supported image"),
        ("png-bomb-60000x60000", _png_declaring(60000, 60000), "image/png", (413,), "too many pixels"),
        ("png-zero-size", _png_declaring(0, 0), "image/png", (400,), "truncated or corrupt"),
        ("jpeg-bomb-65000x65000", _jpeg_declaring(65000, 65000), "image/jpeg", (413,), "too many pixels"),
        ("over-upload-limit", png[:8] + b"\x00" * (MAX_UPLOAD_BYTES + 1), "image/png", (413,), "over the limit"),
    ]
    for fmt, data, mime in (("png", png, "image/png"), ("jpeg", jpeg, "image/jpeg"), ("webp", webp, "image/webp")):
        for fraction in (0.25, 0.5, 0.9):
            cut = data[: int(len(data) * fraction)]
            cases.append((f"{fmt}-truncated-{int(fraction * 100)}pct", cut, mime, (400,), "truncated or corrupt"))
    out = [Case(f"image/{n}", "image", "/v1/captioning", b, {"content-type": ct}, s, f) for n, b, ct, s, f in cases]
    # The same corruption through the other two body forms: multipart and JSON base64.
    out.append(Case("image/multipart-truncated", "image", "/v1/captioning", png[: len(png) // 2], {}, (400,),
                    "truncated or corrupt", multipart={"file": "image/png"}))  # fmt: skip
    out.append(Case("image/multipart-empty-file", "image", "/v1/captioning", b"", {}, (400,), "empty",
                    multipart={"file": "image/png"}))  # fmt: skip
    encoded = json.dumps({"data": base64.b64encode(garbage).decode()}).encode()
    out.append(Case("image/json-base64-garbage", "image", "/v1/captioning", encoded,
                    {"content-type": "application/json"}, (415,), "not a supported image"))  # fmt: skip
    return out


def _infer(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}, allow_nan=True).encode()


def _binary_infer(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def v2_cases() -> list[Case]:
    route = "/v2/models/echo/infer"
    json_ct = {"content-type": "application/json"}
    nan = np.array([np.nan, np.inf, -np.inf], dtype="<f4")
    ok_text = {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["ok"]}
    cases: list[tuple[str, str, bytes, dict[str, str], tuple[int, ...], str]] = [
        ("fp32-nan-inf-json", route, _infer([{"name": "TEXT", "datatype": "FP32", "shape": [3],
                                              "data": [float("nan"), float("inf"), float("-inf")]}]),
         json_ct, (400,), "it must be bytes"),
        ("fp32-nan-inf-binary", route, *_binary_infer(
            {"inputs": [{"name": "TEXT", "datatype": "FP32", "shape": [3],
                         "parameters": {"binary_data_size": nan.nbytes}}]}, nan.tobytes()), (400,), "it must be bytes"),
        ("bytes-holding-nan", route, _infer([{**ok_text, "data": [float("nan")]}]), json_ct, (400,), "text"),
        ("shape-zero", route, _infer([{**ok_text, "shape": [0], "data": []}]), json_ct, (400,), "shape"),
        ("shape-too-long-for-data", route, _infer([{**ok_text, "shape": [2]}]), json_ct, (400,), "element"),
        ("shape-negative", route, _infer([{**ok_text, "shape": [-1]}]), json_ct, (400,), "shape"),
        ("shape-1x2-one-element", route, _infer([{**ok_text, "shape": [1, 2]}]), json_ct, (400,), "shape"),
        ("shape-not-a-list", route, _infer([{**ok_text, "shape": "1"}]), json_ct, (400,), "shape"),
        ("shape-missing", route, _infer([{k: v for k, v in ok_text.items() if k != "shape"}]), json_ct, (400,),
         "shape"),
        ("shape-huge", route, _infer([{**ok_text, "shape": [2**62]}]), json_ct, (400, 413), "shape"),
        ("datatype-unknown", route, _infer([{**ok_text, "datatype": "FP99"}]), json_ct, (400,), "datatype"),
        ("datatype-not-a-string", route, _infer([{**ok_text, "datatype": 5}]), json_ct, (400,), "datatype"),
        ("bytes-holding-numbers", route, _infer([{**ok_text, "data": [1.5]}]), json_ct, (400,), "text"),
        ("input-name-unknown", route, _infer([{**ok_text, "name": "IMAGE"}]), json_ct, (400,), "unknown input"),
        ("input-twice", route, _infer([ok_text, ok_text]), json_ct, (400,), "exactly one input"),
        ("inputs-empty", route, _infer([]), json_ct, (400,), "inputs"),
        ("binary-size-past-end", route, *_binary_infer(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": 100}}]}, b"\x02\x00\x00\x00ok"), (400,), "past the end"),
        ("bytes-length-prefix-lies", route, *_binary_infer(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": 6}}]}, b"\xff\x00\x00\x00ok"), (400,), "byte"),
        ("header-length-past-body", route, b'{"inputs": []}',
         {"content-type": "application/octet-stream", "inference-header-content-length": "999"}, (400,),
         "inference-header-content-length"),
        ("captioning-element-not-base64", "/v2/models/captioning/infer",
         _infer([{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["not base64 !!"]}]), json_ct,
         (400,), "base64"),
        ("captioning-element-truncated-png", "/v2/models/captioning/infer",
         _infer([{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                  "data": [base64.b64encode(_image("PNG")[:40]).decode()]}]), json_ct, (400,), "truncated or corrupt"),
    ]
    return [Case(f"v2/{n}", "v2", r, b, h, s, f) for n, r, b, h, s, f in cases]


def _envelope(series_json: bytes) -> bytes:
    # The task routes read application/json bodies as {"data": <base64>, ...}; a JSON series
    # travels inside, declared by content_type (the forecast README's form).
    return json.dumps({"data": base64.b64encode(series_json).decode(), "content_type": "application/json"}).encode()


def series_cases() -> list[Case]:
    """NaN, Inf and absurd values in a numeric series (the forecast example task)."""
    json_ct, csv_ct = {"content-type": "application/json"}, {"content-type": "text/csv"}
    base = [float(i % 7) for i in range(40)]
    csv = ",".join(map(str, base)).encode()
    cases = [
        ("nan-in-json", _envelope(json.dumps([*base, float("nan")]).encode()), json_ct, "finite"),
        ("inf-in-json", _envelope(json.dumps([*base, float("inf")]).encode()), json_ct, "finite"),
        ("nan-in-csv", csv + b",nan", csv_ct, "finite"),
        ("minus-inf-in-csv", csv + b",-inf", csv_ct, "finite"),
        ("huge-value", csv + b",1e300", csv_ct, "beyond"),
        ("strings-not-numbers", _envelope(json.dumps([*map(str, base)]).encode()), json_ct, "not a number"),
        ("empty", b"", csv_ct, "empty"),
    ]
    return [Case(f"series/{n}", "series", "/v1/forecast", b, h, (400,), f) for n, b, h, f in cases]


def json_cases() -> list[Case]:
    """Bodies the JSON parser itself must refuse, on the task routes and v2."""
    deep = b'{"data": "YWI=", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    big = json.dumps({"data": "A" * (MAX_JSON_BYTES + 10)}).encode()
    json_ct = {"content-type": "application/json"}
    cases = [
        ("deep-5000-captioning", "/v1/captioning", deep, (400,), "levels deep"),
        ("deep-5000-v2", "/v2/models/echo/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", (400,),
         "levels deep"),
        ("oversized-captioning", "/v1/captioning", big, (413,), "over the limit"),
        ("oversized-v2", "/v2/models/echo/infer", big, (413,), "over the limit"),
        ("not-json", "/v1/captioning", b"{data: 1", (400,), "not valid json"),
        ("json-array-not-object", "/v1/captioning", b"[1, 2]", (400,), "must be an object"),
        ("nul-bytes", "/v2/models/echo/infer", b"\x00" * 64, (400,), "not valid json"),
    ]
    return [Case(f"json/{n}", "json", r, b, json_ct, s, f) for n, r, b, s, f in cases]


def build_cases() -> list[Case]:
    from tests.corpus.media_cases import media_cases  # it builds on this module's helpers

    return image_cases() + v2_cases() + series_cases() + json_cases() + media_cases()


def write(out_dir: Path) -> Counter:
    """Write every case's body and a manifest; the count of cases by modality."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for case in build_cases():
        path = out_dir / (case.name + ".bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.body)
        entry = {k: v for k, v in asdict(case).items() if k != "body"}
        manifest.append({**entry, "file": str(path.relative_to(out_dir))})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return Counter(case.modality for case in build_cases())


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus-out")
    counts = write(target)
    print(f"wrote {sum(counts.values())} cases to {target}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
