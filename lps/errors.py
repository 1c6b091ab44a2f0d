"""The one exception type for errors a user can cause (bad config, missing data, bad checkpoint)."""


class LPSError(Exception):
    """An error caused by user input. The CLI prints its message and exits with status 2."""
