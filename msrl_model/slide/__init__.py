"""Opening whole-slide images, tissue detection and the patch grid (see DESIGN.md §2, §10)."""

from msrl_model.slide.reader import ASSUMED_MPP, Slide, open_slide

__all__ = ["ASSUMED_MPP", "Slide", "open_slide"]
