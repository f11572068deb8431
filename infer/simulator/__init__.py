"""An Ollama-compatible runtime that streams made-up text, for demos, tests and benchmarks."""

from infer.simulator.app import create_simulator_app
from infer.simulator.models import SimulatorConfig, count_prompt_tokens
from infer.simulator.serving import run_simulator, serve_in_thread, serve_simulator_in_thread

__all__ = [
    "SimulatorConfig",
    "count_prompt_tokens",
    "create_simulator_app",
    "run_simulator",
    "serve_in_thread",
    "serve_simulator_in_thread",
]
