"""`HeatmapEnsemble`: several pose networks read as one, their heatmaps averaged (PoseDual's and MultiAugs' dual
ensemble, reference §3.6), so evaluation, export and `sshpe predict` treat it like any single network."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


class HeatmapEnsemble(nn.Module):
    """The mean of its members' heatmaps: `(a(x) + b(x)) / 2` for two, as the reference's ensemble evaluates.

    The members are the networks themselves (no copies): an ensemble of a run's live students sees their current
    weights. Its state_dict holds each member under `members.<i>.`.
    """

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two networks, got {len(self.members)}")
        first = self.members[0]
        self.arch, self.num_joints = getattr(first, "arch", None), getattr(first, "num_joints", None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.members[0](x)
        for net in self.members[1:]:
            out = out + net(x)
        return out / len(self.members)
