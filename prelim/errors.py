"""One root exception; each subclass's docstring is its default message."""

from __future__ import annotations


class PrelimError(Exception):
    """prelim failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PrelimError):
    """The configuration is invalid."""


class DatabaseUnavailable(PrelimError):
    """The database cannot be reached."""
