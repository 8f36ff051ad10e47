"""`storage_full` recognises JetStream's out-of-space refusals, also when wrapped."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from agentbus.bus.core import storage_full
from agentbus.contract.errors import BusError


def _wrapped(inner: BaseException) -> BusError:
    try:
        try:
            raise inner
        except BaseException as e:
            raise BusError(f"publish to x failed: {e}") from e
    except BusError as outer:
        return outer


@pytest.mark.parametrize(
    ("err_code", "description"),
    [(10047, "insufficient storage resources available"), (10023, "insufficient resources")],
)
def test_out_of_space_is_recognised_bare_and_wrapped(err_code: int, description: str) -> None:
    e = nats.js.errors.APIError(code=503, err_code=err_code, description=description)
    assert storage_full(e)
    assert storage_full(_wrapped(e))


@pytest.mark.parametrize(
    "error",
    [
        nats.js.errors.APIError(code=400, err_code=10071, description="wrong last sequence: 3"),
        nats.errors.TimeoutError(),
        BusError("publish to x failed: timeout"),
        ValueError("insufficient"),
    ],
)
def test_other_errors_are_not_out_of_space(error: BaseException) -> None:
    assert not storage_full(error)
    assert not storage_full(_wrapped(error))
