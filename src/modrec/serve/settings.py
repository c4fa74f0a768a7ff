"""`AppSettings`: one HTTP app's options (``modrec serve``'s flags), which its schema,
middleware and routes read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modrec.serve.service import ModelService
from modrec.serve.shared import SharedFolder


@dataclass
class AppSettings:
    api_key: str | None = None  # required for writes when set
    # how long a request that finds the model idle waits for company (requests queued
    # behind a busy model always share its next call); max_batch=1: no batching
    batch_window_ms: float = 0.0
    max_batch: int = 64
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 10.0  # a body that stalls longer than this per chunk: 408
    body_deadline_s: float = 60.0  # a body still arriving after this long in all: 408
    max_events: int = 1000  # events per request
    max_items: int = 100  # new items per POST /v1/items
    max_upload_bytes: int = 512 * 1024 * 1024  # a media file sent to POST /v1/media
    upload_deadline_s: float = 600.0  # a media file still arriving after this long: 408
    max_k: int = 1000
    max_history: int = 10_000
    on_ready: list[Callable[[ModelService], None]] = field(default_factory=list)
    # Called with the error when loading fails, instead of the app's own error log line
    # (``modrec serve`` stops and exits with it rather than answer 503 forever).
    on_failure: list[Callable[[Exception], None]] = field(default_factory=list)
    # One of ``modrec serve --workers N``'s processes: the folder the workers share, and
    # the reload number of each model as this one loaded it (`modrec.serve.shared`).
    shared: SharedFolder | None = None
    reloads_applied: dict[str, int] = field(default_factory=dict)
