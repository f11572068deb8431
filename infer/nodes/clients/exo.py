"""Client for Exo (port 52415): its OpenAI-style chat, and its model and instance listings."""

from __future__ import annotations

import time

from infer.models import Runtime
from infer.nodes.clients.base import ModelInfo, Probe
from infer.nodes.clients.clock import probe_deadline
from infer.nodes.clients.ollama import model_names
from infer.nodes.clients.openai import OpenAICompatibleClient, model_ids
from infer.nodes.clients.wire import fetch_json


class ExoClient(OpenAICompatibleClient):
    """Streams POST /v1/chat/completions like any OpenAI-compatible server, except that:

    - the SSE stream carries `: keep-alive` and `: prefill_progress` comments (skipped),
      usage comes on the finish chunk, and `stream_options` is ignored, so it is not sent;
    - /v1/models lists every model card Exo knows, but only models with a running
      instance answer (others get 404), so when /ollama/api/ps (Exo's list of running
      instances) exists, those are the models offered, all loaded;
    - an Exo without /v1/models that answers /healthcheck is up, with no models known.
    """

    runtime = Runtime.EXO
    include_usage = False

    @property
    def api(self) -> str:
        return "/v1"

    async def probe(self) -> Probe:
        async with probe_deadline(self.deadlines):
            started = time.perf_counter()
            listing = await fetch_json(self, "/v1/models", missing_ok=True)
            if listing is None:
                await fetch_json(self, "/healthcheck")
            latency_ms = (time.perf_counter() - started) * 1000
            running = await fetch_json(self, "/ollama/api/ps", missing_ok=True)
        if running is not None:
            models = tuple(ModelInfo(name, loaded=True) for name in model_names(running, "ps"))
        else:
            listed = () if listing is None else model_ids(listing)
            models = tuple(ModelInfo(name) for name in listed)
        return Probe(latency_ms=latency_ms, models=models)
