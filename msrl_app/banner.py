"""The banner above the slide that says a slide is unlike the training cohort (``result.applicability``)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QLabel, QWidget


class ApplicabilityBanner(QLabel):
    """A red line of text above the viewer, shown only while the result on screen is flagged as
    outside the model's applicability domain (:mod:`msrl_model.infer.applicability`)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ood_banner")
        self.setWordWrap(True)
        self.setStyleSheet("background: #8a1c1c; color: white; padding: 6px 10px;")
        self.setVisible(False)

    def show_result(self, result: Any) -> None:
        """Show the flagged result's message ("<head>: <detail>"), or hide for an unflagged one or None."""
        applicability = getattr(result, "applicability", None)
        flagged = applicability is not None and applicability.flagged
        head, _, detail = applicability.message.partition(": ") if flagged else ("", "", "")
        self.setText(f"⚠ <b>{head}.</b> <span style='font-weight:normal'>{detail[:1].upper()}"
                     f"{detail[1:]}.</span>" if flagged else "")
        self.setVisible(flagged)
