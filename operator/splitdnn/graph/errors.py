"""Errors raised by the model graph package; each carries a message a user can act on."""


class GraphError(Exception):
    """Base class for every error the graph package raises on bad input."""


class ModelSourceError(GraphError):
    """A model reference cannot be resolved to an ONNX file (unknown name, missing file, ...)."""


class UnsupportedModelError(GraphError):
    """The model exists but cannot be analysed or split (export failure, several inputs, ...)."""


class InvalidCutError(GraphError):
    """A requested cut is not a valid cut point of the model."""

    def __init__(self, message: str, cut: int, nearest: list[int]) -> None:
        super().__init__(message)
        self.cut = cut
        self.nearest = nearest
