"""Synthetic slides and cohorts (architecture §7): they test every code path on real files and build the
demo bundle; everything they make is documented as synthetic."""

DEMO_SLIDE = {"width": 4096, "height": 3072, "seed": 20240611}  # the app's demo slide (a synthetic SVS): deterministic
