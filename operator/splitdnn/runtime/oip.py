"""Open Inference Protocol v2 (KServe/Triton REST) bodies, both directions.

JSON tensors as the protocol defines them, plus Triton's binary tensor data extension: the
JSON part is followed by raw little-endian tensor bytes, its length given by the
``Inference-Header-Content-Length`` header and each tensor's by its
``parameters.binary_data_size``. The gateway decodes requests and encodes responses; the
client does the opposite with the same tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
_DTYPES = {name: dtype for dtype, name in _DATATYPES.items()}


class OipError(ValueError):
    """A request or response body that does not follow the protocol; names the field."""


def oip_datatype(dtype: str) -> str:
    return _DATATYPES[dtype]


def numpy_dtype(datatype: Any, field: str) -> np.dtype[Any]:
    if datatype not in _DTYPES:
        raise OipError(f"{field}: datatype {datatype!r} is not one of {sorted(_DTYPES)}")
    return np.dtype(_DTYPES[datatype]).newbyteorder("<")


@dataclass
class InferRequest:
    tensor: np.ndarray
    request_id: str | None
    timeout_s: float | None
    binary_output: bool


def split_body(body: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], memoryview]:
    """The JSON object and the binary tail of a (possibly binary-extension) body."""
    length_text = headers.get(HEADER_LENGTH)
    try:
        length = int(length_text) if length_text is not None else len(body)
    except ValueError:
        raise OipError(f"{HEADER_LENGTH} must be an integer, got {length_text!r}") from None
    if not 0 <= length <= len(body):
        raise OipError(f"{HEADER_LENGTH} {length} is outside the body of {len(body)} bytes")
    try:
        value = json.loads(body[:length])
    except ValueError as error:
        raise OipError(f"the JSON part of the body is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise OipError("the body must be a JSON object")
    return value, memoryview(body)[length:]


def tensor_from_json(entry: Any, field: str, tail: memoryview, offset: int,
                     ) -> tuple[np.ndarray, int]:
    """One OIP tensor object (JSON ``data`` or binary) and the new offset into ``tail``."""
    if not isinstance(entry, dict):
        raise OipError(f"{field} must be an object with name, shape, datatype and data")
    dtype = numpy_dtype(entry.get("datatype"), f"{field}.datatype")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise OipError(f"{field}.shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    parameters = entry.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if type(size) is not int or size != count * dtype.itemsize:
            raise OipError(f"{field}.parameters.binary_data_size {size!r} does not match "
                           f"shape {shape} of {entry['datatype']} "
                           f"({count * dtype.itemsize} bytes)")
        if offset + size > len(tail):
            raise OipError(f"{field}: binary data ends after the body")
        array = np.frombuffer(tail[offset:offset + size], dtype=dtype).reshape(shape)
        return array, offset + size
    try:
        array = np.asarray(entry.get("data"), dtype=dtype)
    except (TypeError, ValueError) as error:
        raise OipError(f"{field}.data is not a list of {entry['datatype']} values: "
                       f"{error}") from error
    if array.size != count:
        raise OipError(f"{field}.data has {array.size} values, shape {shape} needs {count}")
    return array.reshape(shape), offset


def decode_infer_request(body: bytes, headers: Mapping[str, str],
                         input_spec: Mapping[str, Any]) -> InferRequest:
    """Parse an infer request for a single-input model described by ``input_spec``."""
    request, tail = split_body(body, headers)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise OipError(f"inputs must be a list with exactly one tensor "
                       f"(this model has one input, {input_spec['name']!r})")
    name = inputs[0].get("name") if isinstance(inputs[0], dict) else None
    if name != input_spec["name"]:
        raise OipError(f"inputs[0].name {name!r}: this model's input is {input_spec['name']!r}")
    tensor, _ = tensor_from_json(inputs[0], "inputs[0]", tail, 0)
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise OipError("parameters must be an object")
    timeout = parameters.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        raise OipError(f"parameters.timeout must be a positive number of seconds, "
                       f"got {timeout!r}")
    request_id = request.get("id")
    return InferRequest(tensor, str(request_id) if request_id is not None else None,
                        float(timeout) if timeout is not None else None,
                        wants_binary_output(request))


def wants_binary_output(request: dict[str, Any]) -> bool:
    parameters = request.get("parameters") or {}
    if isinstance(parameters, dict) and parameters.get("binary_data_output"):
        return True
    outputs = request.get("outputs") or []
    return any(isinstance(out, dict) and isinstance(out.get("parameters"), dict)
               and out["parameters"].get("binary_data") for out in outputs)


def tensor_to_json(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """An OIP tensor object, and its raw bytes when sent with the binary extension."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(array.dtype.name),
                             "shape": list(array.shape)}
    if binary:
        raw = array.tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw
    entry["data"] = array.reshape(-1).tolist()
    return entry, b""


def join_body(document: dict[str, Any], raw: bytes) -> tuple[bytes, dict[str, str]]:
    """Body and headers: plain JSON, or JSON + binary tail with the length header."""
    text = json.dumps(document, separators=(",", ":")).encode()
    if not raw:
        return text, {"Content-Type": "application/json"}
    return text + raw, {"Content-Type": "application/octet-stream",
                        HEADER_LENGTH: str(len(text))}


def encode_infer_response(model: str, request_id: str | None, output_name: str,
                          output: np.ndarray, binary: bool, parameters: dict[str, Any],
                          ) -> tuple[bytes, dict[str, str]]:
    entry, raw = tensor_to_json(output_name, output, binary)
    document: dict[str, Any] = {"model_name": model, "model_version": "1",
                                "outputs": [entry]}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    return join_body(document, raw)


def encode_infer_request(input_name: str, tensor: np.ndarray, binary: bool,
                         timeout_s: float | None = None) -> tuple[bytes, dict[str, str]]:
    entry, raw = tensor_to_json(input_name, tensor, binary)
    document: dict[str, Any] = {"inputs": [entry]}
    parameters: dict[str, Any] = {}
    if binary:
        parameters["binary_data_output"] = True
    if timeout_s is not None:
        parameters["timeout"] = timeout_s
    if parameters:
        document["parameters"] = parameters
    return join_body(document, raw)


def decode_infer_response(body: bytes, headers: Mapping[str, str]
                          ) -> tuple[np.ndarray, dict[str, Any]]:
    """The first output tensor and the response's ``parameters``."""
    response, tail = split_body(body, headers)
    outputs = response.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise OipError("response has no outputs")
    tensor, _ = tensor_from_json(outputs[0], "outputs[0]", tail, 0)
    parameters = response.get("parameters") or {}
    return tensor, parameters if isinstance(parameters, dict) else {}
