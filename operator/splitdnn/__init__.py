"""splitdnn: run one deep neural network split into blocks across the nodes of an edge cluster."""

__version__ = "0.1.0"
