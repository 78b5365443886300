"""The one exception type for user errors (house rule 14).

`HymbaDeployError` means "the input is wrong, here is what and how to fix it": the CLI prints its
message and exits 1. Anything else escaping the library is a bug and keeps its traceback.
"""


class HymbaDeployError(Exception):
    """A user error: a bad checkpoint, config, file, flag or target. The message names the input."""
