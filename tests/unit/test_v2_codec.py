"""The v2 binary tensor codec: round trips, header splitting, and clear errors on bad input."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from mmserve.server.http.v2_codec import (
    BodyTooLarge,
    CodecError,
    UnsupportedEncoding,
    accepted_codings,
    build_body,
    compress_body,
    decode_base64_element,
    decode_binary_tensor,
    decode_json_tensor,
    decompress_body,
    deserialize_bytes_elements,
    element_count,
    encode_binary_tensor,
    encode_json_data,
    parse_header_length,
    parse_infer_request,
    serialize_bytes_elements,
    slice_binary_section,
    split_body,
)

# ----- BYTES -----------------------------------------------------------------------------------


def test_bytes_elements_round_trip_including_empty_and_binary():
    elements = [b"hello", b"", "h\u00e9llo".encode(), bytes(range(256))]
    raw = serialize_bytes_elements(elements)
    assert raw[:9] == struct.pack("<I", 5) + b"hello"
    assert deserialize_bytes_elements(raw) == elements


def test_bytes_tensor_matches_tritonclient_serialisation():
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    values = np.array([b"a", b"bc", b""], dtype=object)
    theirs = serialize_byte_tensor(values).item()
    assert encode_binary_tensor("BYTES", values) == theirs
    assert decode_binary_tensor("BYTES", [3], theirs) == [b"a", b"bc", b""]
    ours = encode_binary_tensor("BYTES", np.array(["x", b"yz"], dtype=object))
    assert list(deserialize_bytes_tensor(ours)) == [b"x", b"yz"]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x05\x00", "too few for a 4-byte length"),
        (struct.pack("<I", 10) + b"short", "claims 10 bytes but only 5 remain"),
        (struct.pack("<I", 1) + b"a" + b"\x00", "element 1"),
    ],
)
def test_truncated_bytes_tensor_is_a_clear_error(raw, message):
    with pytest.raises(CodecError, match=message):
        deserialize_bytes_elements(raw)


def test_bytes_element_count_must_match_shape():
    raw = serialize_bytes_elements([b"a", b"b"])
    with pytest.raises(CodecError, match=r"holds 2 elements but shape \[3\] needs 3"):
        decode_binary_tensor("BYTES", [3], raw)


# ----- numeric -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "datatype, values",
    [
        ("FP32", np.array([[1.5, -2.0], [3.25, np.inf]], dtype=np.float32)),
        ("INT64", np.array([0, -1, 2**62, -(2**63)], dtype=np.int64)),
        ("BOOL", np.array([True, False, True])),
        ("UINT8", np.arange(6, dtype=np.uint8).reshape(2, 3)),
    ],
)
def test_numeric_binary_round_trip(datatype, values):
    raw = encode_binary_tensor(datatype, values)
    assert raw == values.astype(values.dtype.newbyteorder("<")).tobytes()
    decoded = decode_binary_tensor(datatype, list(values.shape), raw)
    np.testing.assert_array_equal(decoded, values)
    assert decoded.shape == values.shape


def test_numeric_binary_is_little_endian():
    assert encode_binary_tensor("INT64", np.array([1], dtype=">i8")) == b"\x01" + b"\x00" * 7
    assert encode_binary_tensor("FP32", np.array([1.0])) == struct.pack("<f", 1.0)


def test_numeric_binary_size_must_match_shape():
    with pytest.raises(CodecError, match=r"FP32 data is 6 bytes but shape \[2\] needs 2 x 4 bytes"):
        decode_binary_tensor("FP32", [2], b"\x00" * 6)


def test_json_tensors_accept_flat_and_nested_data():
    np.testing.assert_array_equal(decode_json_tensor("INT64", [2, 2], [[1, 2], [3, 4]]), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(decode_json_tensor("FP32", [2, 2], [1, 2.5, 3, 4]), [[1, 2.5], [3, 4]])
    assert decode_json_tensor("BYTES", [2], ["h\u00e9", ""]) == ["h\u00e9".encode(), b""]


@pytest.mark.parametrize(
    "datatype, shape, data, message",
    [
        ("INT64", [2], [1, 2.5], "not a valid INT64"),
        ("INT64", [1], [True], "not a valid INT64"),
        ("INT8", [1], [1000], "does not fit INT8"),
        ("BOOL", [1], [1], "not a valid BOOL"),
        ("FP32", [3], [1.0, 2.0], "holds 2 elements but shape"),
        ("BYTES", [1], [7], "must be a string"),
        ("BYTES", [1], "abc", "must be a JSON array"),
        ("BF16", [1], [1.0], "unsupported datatype"),
        ("FP32", [-1], [], "negative dimension"),
        ("FP32", "2", [1, 2], "shape must be a list"),
    ],
)
def test_bad_json_tensor_is_a_clear_error(datatype, shape, data, message):
    with pytest.raises(CodecError, match=message):
        decode_json_tensor(datatype, shape, data)


def test_json_output_data():
    assert encode_json_data("FP32", np.array([0.5, 1.0], dtype=np.float32)) == [0.5, 1.0]
    assert encode_json_data("INT64", np.array([[1], [2]])) == [1, 2]
    # Text stays text; raw bytes become base64 because JSON strings cannot hold them.
    assert encode_json_data("BYTES", np.array(["ABC", b"\xff\x00"], dtype=object)) == ["ABC", "/wA="]


def test_element_count():
    assert element_count([3, 2]) == 6
    assert element_count([]) == 1
    with pytest.raises(CodecError):
        element_count([True])


def test_base64_elements():
    assert decode_base64_element(b"aGk=", "input 'IMAGE' element 0") == b"hi"
    with pytest.raises(CodecError, match="input 'IMAGE' element 3 is not valid base64"):
        decode_base64_element(b"not base64!", "input 'IMAGE' element 3")


# ----- body framing ----------------------------------------------------------------------------------


def test_header_length_parsing():
    assert parse_header_length(None, 10) is None
    assert parse_header_length(" 7 ", 10) == 7
    for bad in ("-1", "abc", "1.5", ""):
        with pytest.raises(CodecError, match="non-negative integer"):
            parse_header_length(bad, 10)
    with pytest.raises(CodecError, match="body has only 10 bytes"):
        parse_header_length("11", 10)


def test_split_body_with_and_without_header_length():
    header = json.dumps({"inputs": []}).encode()
    assert split_body(header, None) == ({"inputs": []}, b"")
    assert split_body(header + b"\x01\x02", len(header)) == ({"inputs": []}, b"\x01\x02")


def test_split_body_explains_a_missing_header_length():
    header = json.dumps({"inputs": []}).encode()
    with pytest.raises(CodecError, match="needs the Inference-Header-Content-Length header"):
        split_body(header + b"\xff\x00binary", None)
    with pytest.raises(CodecError, match="must be a JSON object"):
        split_body(b"[1, 2]", None)


def test_split_body_refuses_absurd_nesting():
    with pytest.raises(CodecError, match="nested 100000 levels deep, over the limit of 64"):
        split_body(b"[" * 100_000 + b"]" * 100_000, None)


def test_parse_infer_request_with_binary_and_json_inputs():
    header = {
        "id": "r1",
        "inputs": [
            {"name": "A", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
            {"name": "B", "datatype": "INT64", "shape": [1], "data": [3]},
            {"name": "C", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
        ],
        "outputs": [{"name": "OUT"}],
        "parameters": {"binary_data_output": True, "max_length": 2},
    }
    header_bytes = json.dumps(header).encode()
    binary = serialize_bytes_elements([b"hi"]) + struct.pack("<f", 0.5)
    parsed = parse_infer_request(header_bytes + binary, str(len(header_bytes)))
    assert parsed.id == "r1"
    assert parsed.chunks == [struct.pack("<I", 2) + b"hi", None, struct.pack("<f", 0.5)]
    assert parsed.outputs == [{"name": "OUT"}]
    assert parsed.params == {"binary_data_output": True, "max_length": 2}
    assert parsed.binary_output is True


def test_parse_infer_request_defaults_and_errors():
    parsed = parse_infer_request(json.dumps({"inputs": [{"name": "A", "data": []}]}).encode(), None)
    assert parsed.id  # generated, so every response can be correlated
    assert (parsed.outputs, parsed.params, parsed.binary_output) == (None, {}, False)
    for header, message in [
        ({}, "non-empty 'inputs'"),
        ({"inputs": ["x"]}, r"inputs\[0\] must be an object"),
        ({"inputs": [{"name": "A", "parameters": {"shared_memory_region": "r"}}]}, "shared memory"),
        ({"inputs": [{"name": "A", "parameters": "p"}]}, "parameters of input 'A' must be a JSON object"),
        ({"inputs": [{"name": "A"}], "outputs": {"name": "O"}}, "'outputs' must be a list"),
        ({"inputs": [{"name": "A"}], "parameters": {"binary_data_output": "yes"}}, "binary_data_output"),
        ({"inputs": [{"name": "A"}], "id": 5}, "'id' must be a string"),
    ]:
        with pytest.raises(CodecError, match=message):
            parse_infer_request(json.dumps(header).encode(), None)


def test_slice_binary_section():
    assert slice_binary_section([3, None, 2], b"abcde") == [b"abc", None, b"de"]
    assert slice_binary_section([None], b"") == [None]
    with pytest.raises(CodecError, match="runs past the end"):
        slice_binary_section([3, 4], b"abcde")
    with pytest.raises(CodecError, match="2 bytes of binary data after the JSON header belong to no tensor"):
        slice_binary_section([3], b"abcde")
    with pytest.raises(CodecError, match="binary_data_size must be a non-negative integer"):
        slice_binary_section([-1], b"")


def test_build_body():
    assert build_body({"a": 1}, []) == (b'{"a":1}', None)
    body, length = build_body({"a": "\u00e9"}, [b"\x00", b"\x01\x02"])
    assert length == len('{"a":"\u00e9"}'.encode())  # a byte count, not characters
    assert body[length:] == b"\x00\x01\x02"


# ----- compression -----------------------------------------------------------------------------------


def test_decompress_body():
    data = b"x" * 1000
    assert decompress_body(gzip.compress(data), "gzip", 2000) == data
    assert decompress_body(zlib.compress(data), "deflate", 2000) == data
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress_body(raw_deflate.compress(data) + raw_deflate.flush(), "deflate", 2000) == data
    assert decompress_body(data, None, 10) == data
    assert decompress_body(data, "identity", 10) == data


def test_decompress_errors():
    with pytest.raises(UnsupportedEncoding, match="'br' is not supported") as info:
        decompress_body(b"", "br", 10)
    assert info.value.status_code == 415
    with pytest.raises(BodyTooLarge) as info:
        decompress_body(gzip.compress(b"\x00" * 100_000), "gzip", 1000)
    assert info.value.status_code == 413
    with pytest.raises(CodecError, match="not valid gzip"):
        decompress_body(b"not gzip", "gzip", 1000)
    with pytest.raises(CodecError, match="truncated"):
        decompress_body(gzip.compress(b"abc" * 100)[:-12], "gzip", 1000)


def test_compress_body_follows_accept_encoding():
    body = b"y" * 500
    assert compress_body(body, None) == (body, None)
    assert compress_body(body, "br") == (body, None)
    assert compress_body(body, "gzip;q=0, deflate") == (zlib.compress(body), "deflate")
    compressed, coding = compress_body(body, "deflate, GZIP; q=0.5")
    assert coding == "gzip" and gzip.decompress(compressed) == body
    assert accepted_codings("gzip;q=0.0, br;q=bad, identity") == {"identity"}
