"""A fourth distillation design, added the way a user adds one: this module and nothing else.

``lin``: a per-patch linear map from main features to target features. Importing the module
registers its network (:data:`cmdiad.distill.base.DISTILLERS`) and its design
(:data:`cmdiad.designs.DESIGNS`); after that ``method="lin"`` works everywhere a method does.
"""

from __future__ import annotations

from torch import nn

from cmdiad.designs import DESIGNS
from cmdiad.distill.base import DISTILLERS, Distiller
from cmdiad.features.base import to_grid
from cmdiad.pipeline.mtfi import Design
from cmdiad.types import PatchFeatures

KIND = "lin"


@DISTILLERS.register(KIND)
class PatchLinear(Distiller):
    """One 1x1 convolution: target features as a linear function of the main features of a patch."""

    kind = KIND

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.init_kwargs = {"in_channels": in_channels, "out_channels": out_channels}
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    @classmethod
    def build(cls, sides, cfg) -> PatchLinear:  # noqa: ANN001
        return cls(sides.main_channels, sides.target_channels)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.proj(x)


@DESIGNS.register(KIND)
class PatchLinearDesign(Design):
    """Main features -> target features on the main grid, like F2F with a linear network."""

    kind = KIND

    def training_data(self, data, grid):  # noqa: ANN001, ANN201
        main, target = to_grid(data.main_features, grid), to_grid(data.target_features, grid)
        return main.features, target.features, main.valid & target.valid

    def hallucinate(self, net, main, inputs, target_extractor, grid):  # noqa: ANN001, ANN201
        pf = main if grid is None else to_grid(main, grid)
        device = next(net.parameters()).device
        return PatchFeatures(net(pf.features.to(device)), pf.valid.to(device))
