"""The root of every error this project raises on purpose.

Each layer subclasses these; the message always says what happened and what to do about it.
`TransientError` may succeed if tried again later; `PermanentError` will not until someone acts.
"""


class PipelineError(Exception):
    """An expected failure with a message meant for the person running the pipeline."""


class TransientError(PipelineError):
    """Retrying later may succeed (network, throttling, a server's bad moment)."""


class PermanentError(PipelineError):
    """Retrying will not help until something is changed (a token, a setting, a table)."""
