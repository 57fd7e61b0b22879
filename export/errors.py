"""The export package's own error: an option it cannot honour for this source, named as the caller gave it."""

from __future__ import annotations


class ExportOptionError(ValueError):
    """An export option out of its range, or one the source pipeline does not take.

    Attributes:
        option: the keyword of :func:`~sdtriton.export.export_repository` (or of its options) that was given, e.g.
            ``skip_guidance_layers``; ``sdtriton export`` names its flag.
        reason: what is wrong and what is allowed.
    """

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason
