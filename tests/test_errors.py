"""modrec's error types: every one is a `ModrecError` (what ``modrec`` reports as the
user's, exit 2) and keeps the built-in base callers catch it by."""

from __future__ import annotations

import pytest

from modrec.atomic import WriteError
from modrec.content.encoders.base import EncodeError
from modrec.content.store import StoreError
from modrec.content.video.numpy_pickle import WeightsError
from modrec.data import DataFormatError, DatasetUnavailable
from modrec.errors import ConfigError, ModrecError, NotFoundError, UnavailableError, UsageError
from modrec.eval import NonFiniteScores
from modrec.llm.model import LLMError
from modrec.runs import RunError
from modrec.serve.errors import RequestError
from modrec.serve.state import AlreadySeeded, StateError
from modrec.train.loop import Diverged


@pytest.mark.parametrize(("error", "builtin"), [
    (ConfigError, ValueError), (UsageError, ValueError), (NotFoundError, KeyError),
    (UnavailableError, RuntimeError), (DataFormatError, ValueError), (RunError, ValueError),
    (Diverged, ValueError), (WriteError, OSError), (StoreError, ValueError),
    (StateError, ValueError), (AlreadySeeded, RuntimeError), (EncodeError, RuntimeError),
    (LLMError, RuntimeError), (WeightsError, ValueError), (RequestError, ValueError),
    (NonFiniteScores, ValueError), (DatasetUnavailable, RuntimeError)])
def test_each_error_is_modrecs_and_keeps_its_builtin_base(error: type, builtin: type) -> None:
    assert issubclass(error, ModrecError) and issubclass(error, builtin)


def test_a_user_id_not_in_the_dataset_is_a_not_found_error(ml100k) -> None:
    with pytest.raises(NotFoundError, match="user id 'nobody' is not in dataset"):
        ml100k.user_index("nobody")
