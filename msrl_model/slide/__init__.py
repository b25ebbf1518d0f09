"""Opening whole-slide images, tissue detection and the patch grid (see docs/architecture.md §2, §10)."""

from msrl_model.slide.reader import ASSUMED_MPP, Slide, open_slide
from msrl_model.slide.tiling import TileGrid, TilingParams, tile_grid
from msrl_model.slide.tissue import TissueMask, TissueParams, tissue_mask

__all__ = ["ASSUMED_MPP", "Slide", "open_slide", "TissueParams", "TissueMask", "tissue_mask",
           "TilingParams", "TileGrid", "tile_grid"]
