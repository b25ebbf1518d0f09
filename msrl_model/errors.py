"""Errors a user can act on.

Every error raised to a user derives from :class:`MSRLError`; its message is one line that says what
happened and what to do. The CLI prints ``error: <message>`` and exits non-zero without a traceback;
the app shows the same text in a dialog.
"""


class MSRLError(Exception):
    """Base class of all user-facing errors; ``str(err)`` is a complete one-line explanation."""

    exit_code = 2


class SlideError(MSRLError):
    """A slide could not be used."""


class NotASlideError(SlideError):
    """The file is not a whole-slide image any backend can read."""


class CorruptSlideError(SlideError):
    """The file looks like a slide but is truncated or damaged."""


class UnreadableTileError(SlideError):
    """A region of an otherwise valid slide could not be decoded."""


class NoTissueError(SlideError):
    """Tissue detection found nothing to analyse on the slide."""


class EncoderError(MSRLError):
    """A patch encoder could not be built (unknown name, missing local weights, ...)."""


class DeviceError(MSRLError):
    """The requested compute device does not exist or cannot be used here."""


class CohortError(MSRLError):
    """A cohort directory is invalid; the message lists every problem found."""


class BundleError(MSRLError):
    """A model bundle is missing, tampered, truncated, too new or mismatched."""


class OutputError(MSRLError, OSError):
    """An output could not be written: the folder is read-only, the disk is full, ...

    Also an :class:`OSError` (``errno`` set when known), so code that handles file-system errors
    keeps working; nothing partial is left behind (see :mod:`msrl_model.files`).
    """

    exit_code = 4

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CancelledError(MSRLError):
    """The user cancelled a long-running job."""

    exit_code = 130
