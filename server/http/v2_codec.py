"""Tensor encoding for the Open Inference Protocol v2 and Triton's binary tensor data extension.

Pure functions on bytes, lists and numpy arrays: no HTTP framework, no tasks. They parse an
infer request body, (de)serialise tensors, build response bodies and handle gzip/deflate.
The routes in `server/routes_v2.py` turn a `CodecError` into a JSON error with its
`status_code`.

Wire formats handled here:

- JSON tensor data: a flat or nested list in row-major order. BYTES elements are strings.
- Binary tensor data: a request or response body is a JSON header of
  `Inference-Header-Content-Length` bytes followed by the tensors' raw bytes, concatenated in
  the order the tensors appear in the header. Each binary tensor states its own length in
  `parameters.binary_data_size`. Numeric tensors are little-endian, row-major. A BYTES tensor
  is its elements one after another, each prefixed with its length as a 4-byte little-endian
  unsigned integer.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import struct
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmserve.server.http.json_limits import InvalidJson, JsonLimitError, JsonLimits, load_json

# v2 datatypes with a fixed-size numpy equivalent. Explicit "<" so the wire stays
# little-endian whatever the host's byte order. BF16 is absent: numpy has no such type.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: tuple[str, ...] = (*NUMPY_DTYPES, "BYTES")

_LENGTH_PREFIX = struct.Struct("<I")
# For callers without settings (tests, clients): no size cap beyond the body's, the default depth.
DEFAULT_JSON_LIMITS = JsonLimits(max_bytes=2**62, max_depth=64)


class CodecError(ValueError):
    """A malformed tensor, header or body; the message says what is wrong. HTTP 400."""

    status_code = 400


class UnsupportedEncoding(CodecError):
    """A Content-Encoding the server cannot decompress. HTTP 415."""

    status_code = 415


class BodyTooLarge(CodecError):
    """A compressed body that inflates past the size limit. HTTP 413."""

    status_code = 413


# ----- shapes and datatypes -----------------------------------------------------------------


def check_datatype(datatype: Any) -> str:
    """The datatype if it is one this server can carry, else CodecError listing the valid ones."""
    if datatype not in DATATYPES:
        raise CodecError(f"unsupported datatype {datatype!r}; expected one of {list(DATATYPES)}")
    return datatype


def element_count(shape: Any) -> int:
    """Elements in a tensor of `shape` (a list of non-negative integers)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise CodecError(f"shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise CodecError(f"shape {shape} has a negative dimension")
    return math.prod(shape)


# ----- request body -------------------------------------------------------------------------


@dataclass
class InferRequest:
    """An infer request from `parse_infer_request`: tensors still as sent, binary chunks cut
    per input (None where an input carries JSON data), `id` generated when the client sent none."""

    id: str
    inputs: list[dict[str, Any]]
    chunks: list[bytes | None]
    outputs: list[dict[str, Any]] | None
    params: dict[str, Any]
    binary_output: bool


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's byte length from `Inference-Header-Content-Length`, or None if absent."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise CodecError(f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}")
    length = int(text)
    if length > body_size:
        raise CodecError(f"Inference-Header-Content-Length is {length} but the body has only {body_size} bytes")
    return length


def split_body(
    body: bytes, header_length: int | None, limits: JsonLimits = DEFAULT_JSON_LIMITS
) -> tuple[dict[str, Any], bytes]:
    """Split a body into its parsed JSON header (within `limits`) and the binary section after it."""
    header_bytes = body if header_length is None else body[:header_length]
    try:
        header = load_json(header_bytes, limits, "request header")
    except InvalidJson as exc:
        hint = "" if header_length is not None else (
            "; a body with binary tensor data needs the Inference-Header-Content-Length header"
        )
        raise CodecError(f"{exc}{hint}") from None
    except JsonLimitError as exc:
        error = CodecError(str(exc))
        error.status_code = exc.status_code  # 413 for size, 400 for depth
        raise error from None
    if not isinstance(header, dict):
        raise CodecError("request header must be a JSON object")
    return header, b"" if header_length is None else body[header_length:]


def slice_binary_section(sizes: Sequence[int | None], binary: bytes) -> list[bytes | None]:
    """Cut the binary section into one chunk per tensor; None for tensors sent as JSON.

    `sizes` are the tensors' `binary_data_size` values in header order. They must account
    for every byte: leftovers or a shortfall mean the header and the body disagree.
    """
    chunks: list[bytes | None] = []
    offset = 0
    for index, size in enumerate(sizes):
        if size is None:
            chunks.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CodecError(f"tensor {index}: binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > len(binary):
            raise CodecError(
                f"tensor {index}: binary_data_size {size} runs past the end of the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        chunks.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} bytes of binary data after the JSON header belong to no tensor")
    return chunks


def parse_infer_request(
    body: bytes, header_length_value: str | None, limits: JsonLimits = DEFAULT_JSON_LIMITS
) -> InferRequest:
    """Parse an infer request body: JSON header, binary section cut per input, parameters."""
    header, binary = split_body(body, parse_header_length(header_length_value, len(body)), limits)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise CodecError("the request needs a non-empty 'inputs' list")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise CodecError(f"inputs[{index}] must be an object with name, datatype, shape and data")
    chunks = slice_binary_section([_binary_size(t) for t in inputs], binary)
    outputs = header.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)):
        raise CodecError("'outputs' must be a list of objects with a name")
    params = json_object(header.get("parameters"), "request 'parameters'")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise CodecError(f"parameter binary_data_output must be true or false, got {binary_output!r}")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise CodecError(f"'id' must be a string, got {request_id!r}")
    return InferRequest(request_id or str(uuid.uuid4()), inputs, chunks, outputs, params, binary_output)


def json_object(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object, {} if absent; CodecError naming `what` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CodecError(f"{what} must be a JSON object, got {value!r}")
    return value


def _binary_size(tensor: dict[str, Any]) -> int | None:
    params = json_object(tensor.get("parameters"), f"parameters of input {tensor.get('name')!r}")
    if "shared_memory_region" in params:
        raise CodecError("shared memory tensors are not supported; send the data in the request")
    return params.get("binary_data_size")


# ----- BYTES elements -----------------------------------------------------------------------


def serialize_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """The binary form of a BYTES tensor: each element prefixed with its 4-byte LE length."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH_PREFIX.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes_elements(raw: bytes) -> list[bytes]:
    """The elements of a binary BYTES tensor; CodecError if a length prefix runs past the end."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise CodecError(
                f"BYTES element {len(elements)}: {len(raw) - offset} trailing bytes are too few for a 4-byte length"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise CodecError(
                f"BYTES element {len(elements)} claims {length} bytes but only {len(raw) - offset} remain"
            )
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    return elements


def decode_base64_element(value: bytes, where: str) -> bytes:
    """Bytes from a base64 string element (JSON cannot carry raw bytes); CodecError naming `where`."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(
            f"{where} is not valid base64 ({exc}); in JSON form this input takes base64 of the file, "
            "or send it as binary tensor data"
        ) from None


# ----- tensors in -----------------------------------------------------------------------------


def decode_binary_tensor(datatype: str, shape: list[int], raw: bytes) -> list[bytes] | np.ndarray:
    """A tensor from its binary form: a list of bytes for BYTES, else a numpy array of `shape`."""
    count = element_count(shape)
    if check_datatype(datatype) == "BYTES":
        elements = deserialize_bytes_elements(raw)
        if len(elements) != count:
            raise CodecError(f"binary BYTES data holds {len(elements)} elements but shape {shape} needs {count}")
        return elements
    dtype = NUMPY_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise CodecError(
            f"binary {datatype} data is {len(raw)} bytes but shape {shape} needs {count} x {dtype.itemsize} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_json_tensor(datatype: str, shape: list[int], data: Any) -> list[bytes] | np.ndarray:
    """A tensor from JSON `data` (flat or nested): a list of UTF-8 bytes for BYTES, else numpy."""
    count = element_count(shape)
    check_datatype(datatype)
    flat = _flatten(data)
    if len(flat) != count:
        raise CodecError(f"data holds {len(flat)} elements but shape {shape} needs {count}")
    if datatype == "BYTES":
        for index, element in enumerate(flat):
            if not isinstance(element, str):
                raise CodecError(f"BYTES element {index} must be a string in JSON, got {type(element).__name__}")
        return [element.encode("utf-8") for element in flat]
    for index, element in enumerate(flat):
        _check_json_number(datatype, element, index)
    try:
        return np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"data does not fit {datatype}: {exc}") from None


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise CodecError(f"tensor data must be a JSON array, got {type(data).__name__}")
    flat: list[Any] = []
    stack = [iter(data)]
    # Iterative rather than recursive so a deeply nested body cannot exhaust the stack.
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_json_number(datatype: str, value: Any, index: int) -> None:
    # numpy would silently turn 1.5 into 1 or True into 1.0; the protocol wants exact types.
    if datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype.startswith(("INT", "UINT")):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise CodecError(f"element {index} is {value!r}, not a valid {datatype} value")


# ----- tensors out ----------------------------------------------------------------------------


def to_bytes_element(value: Any) -> bytes:
    """One BYTES element from a str (UTF-8) or bytes value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CodecError(f"a BYTES element must be str or bytes, got {type(value).__name__}")


def encode_binary_tensor(datatype: str, values: np.ndarray) -> bytes:
    """The binary form of `values` (row-major); BYTES values may be str or bytes objects."""
    if check_datatype(datatype) == "BYTES":
        return serialize_bytes_elements(to_bytes_element(v) for v in np.asarray(values, dtype=object).ravel())
    return np.ascontiguousarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()


def encode_json_data(datatype: str, values: np.ndarray) -> list[Any]:
    """Flat JSON data for `values`. BYTES: str stays text, bytes become base64 (JSON has no bytes)."""
    if check_datatype(datatype) == "BYTES":
        return [_json_bytes_element(v) for v in np.asarray(values, dtype=object).ravel()]
    return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).ravel().tolist()


def _json_bytes_element(value: Any) -> str:
    if isinstance(value, str):
        return value
    return base64.b64encode(to_bytes_element(value)).decode("ascii")


def build_body(header: dict[str, Any], blobs: Sequence[bytes]) -> tuple[bytes, int | None]:
    """Body and header length for a response: plain JSON when there are no blobs."""
    # NaN/Infinity are allowed: a model's score may be -inf, and tritonclient parses them.
    header_bytes = json.dumps(header, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header_bytes, None
    return header_bytes + b"".join(blobs), len(header_bytes)


# ----- compression --------------------------------------------------------------------------


def decompress_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo the Content-Encoding of a request body (gzip, deflate, identity), capped at `max_bytes`."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    # Codings are listed in the order they were applied, so undo them from the last.
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, coding, max_bytes)
        elif coding == "deflate":
            # "deflate" means a zlib stream, but some clients send raw deflate.
            try:
                body = _inflate(body, zlib.MAX_WBITS, coding, max_bytes)
            except CodecError as exc:
                if isinstance(exc, BodyTooLarge):
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, coding, max_bytes)
        else:
            raise UnsupportedEncoding(
                f"Content-Encoding {coding!r} is not supported; send the body as gzip, deflate or uncompressed"
            )
    return body


def _inflate(data: bytes, wbits: int, coding: str, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        # max_length stops a small "zip bomb" from allocating gigabytes before we can refuse it.
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise CodecError(f"request body is not valid {coding} data: {exc}") from None
    if len(out) > max_bytes:
        raise BodyTooLarge(f"decompressed request body is over the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise CodecError(f"request body is truncated {coding} data")
    return out


def compress_body(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress with gzip or deflate when the client accepts it (q > 0); else unchanged."""
    accepted = accepted_codings(accept_encoding or "")
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=6), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body), "deflate"
    return body, None


def accepted_codings(header: str) -> set[str]:
    """Codings an Accept-Encoding header allows (q > 0), lower-cased."""
    accepted = set()
    for part in header.split(","):
        coding, *options = [p.strip() for p in part.split(";")]
        quality = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding and quality > 0:
            accepted.add(coding.lower())
    return accepted
