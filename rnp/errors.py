"""The one error type users see: a single line, exit code 2."""

__all__ = ["RnpError"]


class RnpError(Exception):
    """Bad input (params, files, shapes). The CLI prints it as one line and exits 2."""
