"""User-facing error types.

Every error a user can cause (a bad path, a bad config value, an unparseable file name) is raised as a
:class:`StethoscopeError` subclass whose message names the offending value and what was expected. The jobs in
``jobs/`` catch these and print the message alone (no traceback), exiting with status 2.
"""


class StethoscopeError(Exception):
    """Base class for errors caused by user input (paths, configs, data). The message is meant for the user."""


class ConfigError(StethoscopeError, ValueError):
    """A config, FeatureSpec or search-space value is invalid or an unknown key was given."""


class DataError(StethoscopeError):
    """A data root, machine folder or file set does not have what the stage needs."""


class IndexParseError(DataError):
    """One or more file names match no DCASE grammar.

    Attributes:
        paths: every offending path (all of them, not only the first).
    """

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        shown = "\n  ".join(self.paths)
        super().__init__(
            f"{len(self.paths)} file name(s) match neither the DCASE 2020 grammar "
            "({normal|anomaly}_id_XX_NNNNNNNN.wav, id_XX_NNNNNNNN.wav) nor the DCASE 2021-2024 grammar "
            "(section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN[_<attr>_<value>...].wav, "
            "section_XX_NNNN.wav); pass lenient=True (--lenient) to skip and report them instead:\n  " + shown
        )


class AudioError(DataError):
    """A clip could not be decoded or failed validation. ``reason`` is a short machine-readable cause."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
