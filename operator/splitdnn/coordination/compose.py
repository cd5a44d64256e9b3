"""A path as one torch module: local head → link → host blocks → link → local tail.

For ``r_p = [lout, hin, hout, lin]`` the module runs the local blocks ``0..lout``, the entry
link, the host blocks ``hin..hout``, the exit link and the local blocks ``lin..N_l-1``. Both
links of a cross path belong to the host service (paper 000 §II: "all of the cross-connection
links are located on the host server"). A skip path has one link, on the local service. All
blocks stay frozen; only links have trainable parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.coordination.blocks import BlockedModel
from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.links import Architecture, make_link, parameter_count
from splitdnn.coordination.paths import Path, validate_path


class PathModel(nn.Module):
    """The composed model of one path; ``links`` hold its only trainable parameters."""

    def __init__(self, local: BlockedModel, host: BlockedModel | None, path: Path,
                 architecture: Architecture = "conv", width: int | None = None,
                 just_links: bool = False) -> None:
        super().__init__()
        if host is None and not path.is_skip:
            raise CoordinationError(f"path {path}: a cross path needs a host model")
        validate_path(path, len(local), len(host) if host is not None else 0)
        self.path = path
        self.head = nn.Sequential(*local.blocks[:path.lout + 1])
        self.tail = nn.Sequential(*local.blocks[path.lin:])
        leaving, returning = local.block_outputs[path.lout], local.block_inputs[path.lin]
        if path.is_skip or host is None:
            self.host_part: nn.Module = nn.Identity()
            self.entry = make_link(leaving, returning, architecture, width)
            self.exit: nn.Module = nn.Identity()
        else:
            entering = host.block_inputs[path.hin]
            self.entry = make_link(leaving, entering, architecture, width)
            self.host_part = nn.Identity() if just_links else \
                nn.Sequential(*host.blocks[path.hin:path.hout + 1])
            exiting = entering if just_links else host.block_outputs[path.hout]
            self.exit = make_link(exiting, returning, architecture, width)
        self.links = nn.ModuleList([self.entry, self.exit])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.exit(self.host_part(self.entry(self.head(x)))))

    def train(self, mode: bool = True) -> PathModel:
        """Only links switch to training mode; frozen blocks keep their statistics."""
        super().train(False)
        self.links.train(mode)
        return self

    def frozen_modules(self) -> nn.ModuleList:
        """The blocks the path borrows: none of their parameters or buffers may change."""
        return nn.ModuleList([self.head, self.host_part, self.tail])


@dataclass(frozen=True)
class ParameterBudget:
    """Paper 000 Fig. 5b: parameters a path skips on the local model vs adds on the host."""

    skipped_local: int
    link: int
    host_blocks: int

    @property
    def added_host(self) -> int:
        """Links plus the host blocks the path runs (the paper's "host-added" parameters)."""
        return self.link + self.host_blocks


def parameter_budget(local: BlockedModel, host: BlockedModel | None,
                     model: PathModel) -> ParameterBudget:
    """Count the parameters a path skips and adds."""
    path = model.path
    host_blocks = 0 if path.is_skip or host is None or isinstance(model.host_part, nn.Identity) \
        else host.parameters_in(range(path.hin, path.hout + 1))
    return ParameterBudget(skipped_local=local.parameters_in(path.skipped_local_blocks()),
                           link=parameter_count(model.links), host_blocks=host_blocks)
