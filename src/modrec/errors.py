"""The base of modrec's own errors, and the general kinds that have no package of their own.

A `ModrecError` is a problem the user can fix from its message: input, settings, files
or a state of the world modrec cannot work with, named with what to do instead.
``modrec`` prints its message with exit status 2; any other exception is a bug in
modrec, named as an internal error with exit status 1 (``-v`` shows its traceback). So
code that refuses a user's request raises a `ModrecError`, and a plain `ValueError`,
`KeyError` or `RuntimeError` is left for what only a mistake in modrec can cause.

Each error type also derives from the built-in exception it has always been (the
packages' own ones too: `DataFormatError` and `RunError` are `ValueError`s, `WriteError`
an `OSError`, `LLMError` a `RuntimeError`), so ``except ValueError`` keeps catching them.
This module imports nothing of modrec: every package can raise these.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ModrecError", "NotFoundError", "UnavailableError", "UsageError"]


class ModrecError(Exception):
    """A problem the user (or the world) must change something about; the message names
    it, where, and what to do."""


class ConfigError(ModrecError, ValueError):
    """A setting that cannot be used: a configuration file, ``--set`` override, option
    value or environment variable. The message names the setting and what it accepts."""


class UsageError(ModrecError, ValueError):
    """A request that cannot be done as asked: options that contradict each other or
    lack a companion, data that does not have what the request needs (a column, enough
    events for a split), a name that means nothing here."""


class NotFoundError(ModrecError, KeyError):
    """Something the user named is not there: a user or item id, a computed column,
    stored embeddings. The message says what is there, or how to make it."""


class UnavailableError(ModrecError, RuntimeError):
    """Something the request needs cannot be had here and now: a program not installed,
    a model or dataset that cannot be downloaded. The message says how to get it."""
