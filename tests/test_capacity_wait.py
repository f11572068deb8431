"""At capacity a request waits in its model's queue for a free node, then 503s."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio.to_thread
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtimes import CHAT_PATHS, FakeRuntime, Seen
from starlette.types import Send
from test_gateway import MESSAGES, MODEL, Market

from infer.app import create_app
from infer.config import Settings
from infer.db import Database
from infer.routing.scoring import OVERLOAD
from infer.simulator import serve_in_thread

REGISTER = "mutation($input: RegisterNodeInput!) { registerNode(input: $input) { id status } }"
PRICES = [{"model": MODEL, "inputPerMillion": "1", "outputPerMillion": "2"}]
SLOTS = 1 * OVERLOAD  # a node of capacity 1 takes this many requests before it is busy


@dataclass
class GatedRuntime(FakeRuntime):
    """An Ollama runtime whose every answer waits until the test lets one go."""

    gate: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    async def _answer(self, seen: Seen, send: Send) -> None:
        if seen.path in CHAT_PATHS:
            await anyio.to_thread.run_sync(self.gate.acquire, abandon_on_cancel=True)
        await super()._answer(seen, send)


async def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Busy:
    def __init__(self, market: Market, runtime: GatedRuntime) -> None:
        self.market = market
        self.runtime = runtime

    async def waiting(self) -> float:
        text = (await self.market.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            if family.name == "infer_requests_waiting":
                return family.samples[0].value
        raise AssertionError("no infer_requests_waiting")

    async def until_waiting(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while await self.waiting() != count:
            assert time.monotonic() < deadline, f"never {count} waiting"
            await asyncio.sleep(0.01)

    def call(self) -> asyncio.Task[int]:
        async def one() -> int:
            try:
                await self.market.async_client().chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=5,
                )
            except openai.APIStatusError as error:
                return error.status_code
            return 200

        return asyncio.create_task(one())

    async def fill(self) -> list[asyncio.Task[int]]:
        """Every slot of the node taken by a request the runtime holds."""
        held = [self.call() for _ in range(SLOTS)]
        await _until(lambda: len(self.runtime.chats()) == SLOTS, "the node to be full")
        return held


@pytest.fixture
def runtime() -> GatedRuntime:
    return GatedRuntime(dialect="ollama", models=(MODEL,))


def _busy_market(
    settings: Settings, db: Database, runtime: GatedRuntime, **update: object
) -> Callable[[], AsyncIterator[Busy]]:
    async def make() -> AsyncIterator[Busy]:
        with (
            serve_in_thread(runtime) as node,
            serve_in_thread(create_app(settings.model_copy(update=update)), lifespan="on") as url,
        ):
            market = Market(url, db)
            await market.setup(credits=1_000_000)
            variables = {
                "input": {
                    "name": "one-slot",
                    "runtime": "OLLAMA",
                    "endpoint": node,
                    "prices": PRICES,
                    "capacity": 1,
                }
            }
            registered = await market.http.post(
                "/graphql",
                json={"query": REGISTER, "variables": variables},
                headers={"Authorization": f"Bearer {market.operator_key}"},
            )
            assert registered.json()["data"]["registerNode"]["status"] == "ONLINE"
            try:
                yield Busy(market, runtime)
            finally:
                for _ in range(10):
                    runtime.gate.release()  # nothing stays held when the test ends
                await market.close()

    return make


@pytest.fixture
async def patient(settings: Settings, db: Database, runtime: GatedRuntime) -> AsyncIterator[Busy]:
    async for busy in _busy_market(settings, db, runtime, capacity_wait_seconds=30)():
        yield busy


async def test_a_request_at_capacity_waits_for_a_slot_and_is_served(patient: Busy) -> None:
    held = await patient.fill()
    waiting = patient.call()
    await patient.until_waiting(1)
    assert len(patient.runtime.chats()) == SLOTS  # it has not reached the node
    patient.runtime.gate.release()  # one answer ends: its slot goes to the waiting request
    await _until(lambda: len(patient.runtime.chats()) == SLOTS + 1, "the waiter to be sent")
    for _ in range(SLOTS):
        patient.runtime.gate.release()
    assert await asyncio.gather(*held, waiting) == [200] * (SLOTS + 1)
    await patient.market.assert_books_balance()


async def test_waiting_requests_are_served_in_arrival_order(patient: Busy) -> None:
    held = await patient.fill()
    first = patient.call()
    await patient.until_waiting(1)
    second = patient.call()
    await patient.until_waiting(2)
    patient.runtime.gate.release()
    await _until(lambda: len(patient.runtime.chats()) == SLOTS + 1, "the first waiter")
    assert await patient.waiting() == 1
    for _ in range(SLOTS + 1):
        patient.runtime.gate.release()
    assert await asyncio.gather(*held, first, second) == [200] * (SLOTS + 2)
    # The first to queue was the first sent on: its prompt arrived third.
    assert len(patient.runtime.chats()) == SLOTS + 2


async def test_past_the_deadline_a_waiting_request_gets_503_with_retry_after(
    settings: Settings, db: Database, runtime: GatedRuntime
) -> None:
    async for busy in _busy_market(settings, db, runtime, capacity_wait_seconds=0.3)():
        held = await busy.fill()
        began = time.monotonic()
        refused = await busy.market.http.post(
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
            headers={"Authorization": f"Bearer {busy.market.buyer_key}"},
        )
        waited = time.monotonic() - began
        for _ in range(SLOTS):
            runtime.gate.release()
        assert await asyncio.gather(*held) == [200] * SLOTS
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "no_node_available"
    assert waited >= 0.3
    assert len(runtime.chats()) == SLOTS
    await busy.market.assert_books_balance()


async def test_past_the_queue_limit_a_request_is_refused_at_once(
    settings: Settings, db: Database, runtime: GatedRuntime
) -> None:
    update = {"capacity_wait_seconds": 30, "capacity_queue_limit": 1}
    async for busy in _busy_market(settings, db, runtime, **update)():
        held = await busy.fill()
        waiting = busy.call()
        await busy.until_waiting(1)
        assert await busy.call() == 503
        for _ in range(SLOTS + 1):
            runtime.gate.release()
        assert await asyncio.gather(*held, waiting) == [200] * (SLOTS + 1)


async def test_a_buyer_who_disconnects_leaves_the_queue(patient: Busy) -> None:
    held = await patient.fill()
    market = patient.market
    async with httpx.AsyncClient(base_url=market.url) as leaving:
        request = asyncio.create_task(
            leaving.post(
                "/api/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
                headers={"Authorization": f"Bearer {market.buyer_key}"},
                timeout=30,
            )
        )
        await patient.until_waiting(1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await patient.until_waiting(0)
    for _ in range(SLOTS):
        patient.runtime.gate.release()
    assert await asyncio.gather(*held) == [200] * SLOTS
    # The next request finds the node free: no slot was kept for the one who left.
    patient.runtime.gate.release()
    assert await patient.call() == 200
    assert len(patient.runtime.chats()) == SLOTS + 1
    await market.assert_books_balance()  # no hold left open, none charged twice
