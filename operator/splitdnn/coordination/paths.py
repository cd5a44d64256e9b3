"""Paths ``r_p = [lout, hin, hout, lin]`` through a local and a host model (paper 000 §II-B).

A cross path leaves the local model after its block ``lout``, runs the host blocks
``hin..hout`` and comes back before the local block ``lin``, skipping the local blocks
``lout+1 .. lin-1``. A skip path stays on the local model and links ``lout`` to ``lin``
directly; as in the paper it is written with ``hin = hout = N_f`` (``N_f`` much larger than
any block count) so that distances between paths keep meaning something.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitdnn.coordination.errors import CoordinationError

N_F = 1000  # the paper's N_f >> N_l: the host "block" index of a skip path


@dataclass(frozen=True, order=True)
class Path:
    """One inference path; ``hin``/``hout`` are ``N_F`` for a skip path."""

    lout: int
    hin: int
    hout: int
    lin: int

    @property
    def is_skip(self) -> bool:
        """True for a local skip-connection (no host blocks)."""
        return self.hin == N_F and self.hout == N_F

    @property
    def vector(self) -> tuple[int, int, int, int]:
        """``r_p`` as a tuple, the coordinates the search measures distances in."""
        return (self.lout, self.hin, self.hout, self.lin)

    def as_list(self) -> list[int]:
        """``[lout, hin, hout, lin]`` (skip paths keep ``N_F`` in the host positions)."""
        return list(self.vector)

    def skipped_local_blocks(self) -> range:
        """Local blocks the path does not run."""
        return range(self.lout + 1, self.lin)

    def __str__(self) -> str:
        if self.is_skip:
            return f"skip[{self.lout}->{self.lin}]"
        return f"[{self.lout},{self.hin},{self.hout},{self.lin}]"


def skip_path(lout: int, lin: int) -> Path:
    """The skip-connection from local block ``lout`` to local block ``lin``."""
    return Path(lout, N_F, N_F, lin)


def validate_path(path: Path, local_blocks: int, host_blocks: int) -> Path:
    """Return ``path`` if it fits both models, else raise naming the violated bound."""
    if local_blocks < 2:
        raise CoordinationError(f"local blocks: need at least 2 to leave and return, got "
                                f"{local_blocks}")
    if not 0 <= path.lout < path.lin < local_blocks:
        raise CoordinationError(
            f"path {path.as_list()}: need 0 <= lout < lin < N_l={local_blocks}")
    if path.is_skip:
        return path
    if host_blocks < 1:
        raise CoordinationError(f"host blocks: need at least 1, got {host_blocks}")
    if not 0 <= path.hin <= path.hout < host_blocks:
        raise CoordinationError(
            f"path {path.as_list()}: need 0 <= hin <= hout < N_h={host_blocks}")
    return path


def parse_path(values: list[int], local_blocks: int, host_blocks: int) -> Path:
    """``[lout, hin, hout, lin]`` (or ``[lout, lin]`` for a skip path), validated."""
    if len(values) == 2:
        return validate_path(skip_path(values[0], values[1]), local_blocks, host_blocks)
    if len(values) != 4:
        raise CoordinationError(f"path: expected [lout, hin, hout, lin], got {values}")
    return validate_path(Path(*values), local_blocks, host_blocks)


def enumerate_paths(local_blocks: int, host_blocks: int, skip: bool = True) -> list[Path]:
    """Every valid cross path (and skip path when ``skip``), in lexicographic order."""
    if local_blocks < 2:
        raise CoordinationError(f"local blocks: need at least 2, got {local_blocks}")
    pairs = [(lout, lin) for lout in range(local_blocks) for lin in range(lout + 1, local_blocks)]
    paths = [Path(lout, hin, hout, lin) for lout, lin in pairs
             for hin in range(host_blocks) for hout in range(hin, host_blocks)]
    if skip:
        paths += [skip_path(lout, lin) for lout, lin in pairs]
    return paths
