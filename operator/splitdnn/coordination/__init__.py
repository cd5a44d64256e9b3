"""CoDE (papers 000, 001): a local model borrows a host model's blocks through trained links.

Paths ``[lout, hin, hout, lin]`` (``paths``), models divided into blocks (``blocks``), links
(``links``), the composed path model (``compose``), link training with frozen blocks
(``training``), the throughput/reward model and paper 001's cost (``throughput``), block
timing (``timing``), Algorithm 1 and exhaustive search (``search``), and ``session`` tying
them together for the CLI and the benchmark. Torch is imported by most modules: import this
package lazily from command-line code.
"""

from splitdnn.coordination.errors import CoordinationError, FrozenParameterChanged
from splitdnn.coordination.paths import (
           N_F,
           Path,
           enumerate_paths,
           parse_path,
           skip_path,
           validate_path,
)

__all__ = ["N_F", "CoordinationError", "FrozenParameterChanged", "Path", "enumerate_paths",
           "parse_path", "skip_path", "validate_path"]
