"""The bench market: the request, the buyer, the operator and the price, set up through INFER."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx

from .errors import BenchError

MODEL = "bench-model:latest"  # the simulator names an untagged model so, as Ollama does
MAX_TOKENS = 16
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say something short about the sea."}],
    "max_tokens": MAX_TOKENS,
}
BUYER, OPERATOR = "buyer@bench.example", "operator@bench.example"
PASSWORD = "bench gateway pass phrase"
GRANT_USD = "1000"
PRICE_IN, PRICE_OUT = "1", "2"  # USD per million tokens: µ$1 and µ$2 a token

SIGN_UP = "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { id } }"
CREATE_KEY = "mutation($n: String!) { createApiKey(name: $n) { secret } }"
REGISTER = "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { id status } }"


async def graphql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise BenchError(f"GraphQL failed ({response.status_code}): {body}")
    return dict(body["data"])


async def wait_for_settlements(platform: str) -> None:
    """INFER writes a settlement just after its answer; any GraphQL request waits for them."""
    async with httpx.AsyncClient(base_url=platform, timeout=60) as client:
        await graphql(client, "{ __typename }", {})


async def sign_up_with_key(platform: str, email: str) -> str:
    async with httpx.AsyncClient(base_url=platform, timeout=30) as session:  # its own cookies
        await graphql(session, SIGN_UP, {"e": email, "p": PASSWORD})
        data = await graphql(session, CREATE_KEY, {"n": "bench"})
    return str(data["createApiKey"]["secret"])


def grant_credits(env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "infer.cli", "credits", "grant", BUYER, GRANT_USD]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"credits grant failed: {done.stderr.strip()}")


async def register_node(platform: str, operator_key: str, endpoint: str, runtime: str) -> None:
    node = {
        "name": "bench-simulator",
        "runtime": runtime.upper(),
        "endpoint": endpoint,
        "capacity": 1000,  # the router must not turn requests away at concurrency 32
        "prices": [{"model": MODEL, "inputPerMillion": PRICE_IN, "outputPerMillion": PRICE_OUT}],
    }
    async with httpx.AsyncClient(base_url=platform, timeout=30) as client:
        data = await graphql(client, REGISTER, {"i": node}, key=operator_key)
    if data["registerNode"]["status"] != "ONLINE":
        raise BenchError(f"the simulator node is not online: {data}")


async def set_up(platform_url: str, sim_url: str, env: dict[str, str], runtime: str) -> str:
    """Buyer and operator sign up, credits, the node: all through INFER's own API and CLI.

    Returns the buyer's API key.
    """
    buyer_key = await sign_up_with_key(platform_url, BUYER)
    operator_key = await sign_up_with_key(platform_url, OPERATOR)
    await asyncio.to_thread(grant_credits, env)
    await register_node(platform_url, operator_key, sim_url, runtime)
    return buyer_key
