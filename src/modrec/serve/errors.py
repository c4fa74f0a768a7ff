"""The one error type the service layer raises for a request it cannot answer."""

from __future__ import annotations

from modrec.errors import ModrecError


class RequestError(ModrecError, ValueError):
    """A request that cannot be answered as asked (unknown model or item, missing
    timestamps, no text embeddings to search); the HTTP layer answers ``status`` with
    this message."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
