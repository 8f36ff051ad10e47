"""`AgentService.readiness` before, during and after `setup`: a service whose setup is
still retrying (say the KV bucket is not provisioned yet) is not ready, even though its
NATS connection is up and it has no consumer loops yet to be unbound."""

from __future__ import annotations

from typing import cast

import pytest

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.contract.settings import Settings
from agentbus.runtime.service import AgentService

pytestmark = pytest.mark.unit


class _ConnectedBus:
    connected = True


class _Service(AgentService):
    name = "probe"

    def __init__(self, settings: Settings, *, fail: bool) -> None:
        super().__init__(settings)
        self.fail = fail

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        if self.fail:
            raise RuntimeError("KV bucket 'jobs' not found")
        return []


async def test_not_ready_while_setup_has_not_returned() -> None:
    svc = _Service(Settings(), fail=True)
    assert svc.readiness() == (False, "starting")
    with pytest.raises(RuntimeError):
        await svc.start(cast(Bus, _ConnectedBus()))
    # connected, zero loops, and still not ready: setup never finished
    assert svc.readiness() == (False, "starting")
    svc.fail = False
    await svc.start(cast(Bus, _ConnectedBus()))
    assert svc.readiness() == (True, "ready")
