"""Python client for a splitdnn gateway: ``Client(url).infer(array) -> array``.

``http://HOST:PORT`` speaks the Open Inference Protocol v2 (binary tensor extension by
default, plain JSON with ``binary=False``); ``tcp://`` and ``ipc://`` URLs use the gateway's
native ZeroMQ endpoint and the wire format.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from splitdnn.runtime.oip import decode_infer_response, encode_infer_request
from splitdnn.runtime.wire import DEFAULT_MAX_BYTES, Message, configure_socket, decode, encode


class InferenceError(RuntimeError):
    """The gateway answered with an error (``status`` is the HTTP status or wire code)."""

    def __init__(self, status: int | str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class Result:
    output: np.ndarray
    exit: int | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)


class Client:
    """A blocking client; one instance per thread."""

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 30.0,
                 binary: bool = True) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.binary = binary
        self.model = model
        self.input_name: str | None = None
        self.ids = itertools.count()
        self.socket: zmq.Socket[Any] | None = None
        if self.url.startswith(("tcp://", "ipc://")):
            self.socket = zmq.Context.instance().socket(zmq.DEALER)
            configure_socket(self.socket, DEFAULT_MAX_BYTES)
            self.socket.connect(self.url)
        elif not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http://, https://, tcp:// or ipc://, "
                             f"got {url!r}")

    def infer(self, array: np.ndarray) -> np.ndarray:
        """Run the model on ``array`` and return its output."""
        return self.infer_result(array).output

    def infer_result(self, array: np.ndarray) -> Result:
        """Output plus the exit taken (None: the full model) and, over ZeroMQ, the trace."""
        if self.socket is not None:
            return self._infer_zmq(array)
        return self._infer_http(array)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _infer_zmq(self, array: np.ndarray) -> Result:
        assert self.socket is not None
        request_id = f"c{next(self.ids)}"
        deadline = time.time() + self.timeout_s
        self.socket.send_multipart(encode(Message(request_id, self.url, deadline, [array])),
                                   copy=False)
        while True:
            if not self.socket.poll(int(max(deadline - time.time(), 0) * 1000) + 100):
                raise InferenceError(504, f"no reply from {self.url} within "
                                          f"{self.timeout_s:g} s")
            reply = decode(self.socket.recv_multipart(copy=False), now=float("-inf"))
            if reply.id == request_id:  # an earlier, timed-out request's late reply is skipped
                break
        if reply.error is not None:
            raise InferenceError(reply.error["code"], reply.error["message"])
        return Result(reply.tensors[0].copy(), reply.exit, reply.trace)

    def _infer_http(self, array: np.ndarray) -> Result:
        model, input_name = self._metadata()
        body, headers = encode_infer_request(input_name, array, self.binary, self.timeout_s)
        url = f"{self.url}/v2/models/{model}/infer"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s + 5) as response:
                payload, reply_headers = response.read(), response.headers
        except urllib.error.HTTPError as error:
            raise InferenceError(error.code, _error_text(error.read())) from None
        output, parameters = decode_infer_response(payload, reply_headers)
        exit_index = parameters.get("exit")
        return Result(output.copy(), exit_index if isinstance(exit_index, int) else None)

    def _metadata(self) -> tuple[str, str]:
        """The served model's name (repository index) and input name (model metadata)."""
        if self.model is None:
            index = self._get_json("/v2/repository/index", method="POST")
            if not index:
                raise InferenceError(404, f"{self.url} serves no model")
            self.model = str(index[0]["name"])
        if self.input_name is None:
            metadata = self._get_json(f"/v2/models/{self.model}")
            self.input_name = str(metadata["inputs"][0]["name"])
        return self.model, self.input_name

    def _get_json(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise InferenceError(error.code, _error_text(error.read())) from None


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")
