"""Patch features: parallel tile reading, batched extraction with a cache, h5 feature files (architecture §3)."""

from msrl_model.features.h5io import FeatureFile, FeatureFileError, read_features, write_features
from msrl_model.features.pipeline import (ExtractReport, ExtractStats, SlideResult, extract_many,
                                          extract_slide)
from msrl_model.features.reader import ParallelTileReader, ReaderConfig

__all__ = ["FeatureFile", "FeatureFileError", "read_features", "write_features", "ExtractReport",
           "ExtractStats", "SlideResult", "extract_many", "extract_slide", "ParallelTileReader", "ReaderConfig"]
