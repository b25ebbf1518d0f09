"""MSRL Studio's science package: slides, features, the MSRL networks, training and inference.

Never imports Qt (``tests/test_no_qt.py`` enforces it), so it runs headless on servers and in CI.
References of the form "architecture §N" point to ``docs/architecture.md``.
"""

__version__ = "0.1.0"

# Shown with every prediction: the app header and footer, the PDF report, the result JSON, model cards.
RESEARCH_USE_ONLY = "Research use only — not for diagnostic use"
