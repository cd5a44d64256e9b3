"""Runtime: the processes that run blocks and pass tensors between them.

- :mod:`splitdnn.runtime.wire`: the ZeroMQ wire format (msgpack header + raw tensor frames).
- :mod:`splitdnn.runtime.worker`: one block behind a PULL socket (batching, early exits).
- :mod:`splitdnn.runtime.gateway`: Open Inference Protocol v2 over HTTP plus a native
  ZeroMQ endpoint, in front of the first stage.
- :mod:`splitdnn.runtime.client`: ``Client(url).infer(array)`` over HTTP or ZeroMQ.
- :mod:`splitdnn.runtime.serve`: a whole split served locally, one process per block.

The runtime never imports the controller.
"""
