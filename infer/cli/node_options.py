"""The `infer node …` subcommands and their options."""

from __future__ import annotations

import argparse

from infer.cli.agent import cmd_node_agent, cmd_node_tray
from infer.cli.node import (
    cmd_node_detect,
    cmd_node_doctor,
    cmd_node_join,
    cmd_node_register,
    cmd_node_service_install,
    cmd_node_simulate,
    cmd_node_status,
)


def add_node_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from infer.agent.detect import EXO_URL, LLAMACPP_URL, LMSTUDIO_URL, OLLAMA_URL, VLLM_URL

    node = commands.add_parser("node", help="tools for node operators")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    simulate = node_commands.add_parser("simulate", help="run an Ollama-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=11434)
    simulate.add_argument("--model", action="append", help="a model to serve (repeatable)")
    simulate.add_argument("--tokens-per-second", type=float, default=None)
    simulate.add_argument("--ttft-ms", type=float, default=0.0)
    simulate.add_argument("--error-rate", type=float, default=0.0)
    simulate.add_argument("--hang", action="store_true", help="never answer chat requests")
    simulate.add_argument(
        "--drop-after-tokens", type=int, default=None, help="cut the connection after N tokens"
    )
    simulate.add_argument("--seed", type=int, default=None)
    simulate.set_defaults(handler=cmd_node_simulate)

    probes = argparse.ArgumentParser(add_help=False)
    probes.add_argument("--ollama-url", default=OLLAMA_URL, help=f"default {OLLAMA_URL}")
    probes.add_argument("--exo-url", default=EXO_URL, help=f"default {EXO_URL}")
    probes.add_argument("--llamacpp-url", default=LLAMACPP_URL, help=f"default {LLAMACPP_URL}")
    probes.add_argument("--vllm-url", default=VLLM_URL, help=f"default {VLLM_URL}")
    probes.add_argument("--lmstudio-url", default=LMSTUDIO_URL, help=f"default {LMSTUDIO_URL}")
    detect = node_commands.add_parser(
        "detect", parents=[probes], help="find local runtimes, models and GPU; print JSON"
    )
    detect.set_defaults(handler=cmd_node_detect)

    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument(
        "--config",
        metavar="PATH",
        help="the node configuration `join` writes (default: $INFER_NODE_CONFIG, else "
        "~/.config/infer/node.json; macOS: ~/Library/Application Support/infer/node.json)",
    )
    connecting = argparse.ArgumentParser(add_help=False, parents=[configured])
    connecting.add_argument("--platform", help="the platform's URL (default: the stored one)")
    key = connecting.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        help="an API key (visible to other local users; default: "
        "$INFER_API_KEY, else the stored node key)",
    )
    key.add_argument("--api-key-file", help="read the API key from this file ('-': stdin)")

    choosing = argparse.ArgumentParser(add_help=False, parents=[probes])
    choosing.add_argument("--endpoint", help="the URL the platform reaches the runtime at")
    choosing.add_argument(
        "--tunnel",
        action="store_true",
        help="no public endpoint: the agent connects out and the platform's requests come "
        "through that connection (not with --endpoint)",
    )
    choosing.add_argument("--name", help="the node's name (default: HOSTNAME-RUNTIME)")
    choosing.add_argument(
        "--runtime", help="ollama, exo, llama.cpp, vllm, lmstudio or openai, when several run"
    )
    choosing.add_argument(
        "--price",
        action="append",
        metavar="MODEL=IN/OUT",
        help="USD per 1M input/output tokens (repeatable)",
    )
    choosing.add_argument(
        "--default-price", metavar="IN/OUT", help="price for every detected model without a --price"
    )
    registering = argparse.ArgumentParser(add_help=False, parents=[choosing, connecting])
    register = node_commands.add_parser(
        "register", parents=[registering], help="register this machine's runtime with a platform"
    )
    register.set_defaults(handler=cmd_node_register)
    joining = node_commands.add_parser(
        "join",
        parents=[choosing, configured],
        help="exchange an enrolment code for a node key kept on this box, then register",
    )
    joining.add_argument("--platform", required=True, help="the platform's URL")
    joining.add_argument("--code", required=True, help="the enrolment code from the dashboard")
    joining.add_argument(
        "--force", action="store_true", help="replace a node key this box already keeps"
    )
    joining.set_defaults(handler=cmd_node_join)
    status = node_commands.add_parser(
        "status",
        parents=[connecting],
        help="this box's nodes as the platform sees them (exit 0: all online)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_node_status)
    doctor = node_commands.add_parser(
        "doctor", parents=[probes, connecting], help="check what a node needs (exit 0: all good)"
    )
    doctor.add_argument("--runtime", help="the runtime to check, when several run")
    doctor.add_argument("--endpoint", help=argparse.SUPPRESS)
    doctor.add_argument("--name", help=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_node_doctor, price=None, default_price=None)
    service = node_commands.add_parser("service", help="run the agent as a service")
    service_commands = service.add_subparsers(dest="service_command", required=True)
    install = service_commands.add_parser(
        "install",
        parents=[configured],
        help="write a systemd user unit (Linux) or launchd agent (macOS) running the agent",
    )
    install.add_argument("--dry-run", action="store_true", help="print it; write nothing")
    install.add_argument("--force", action="store_true", help="replace a different one")
    install.set_defaults(handler=cmd_node_service_install)
    agent = node_commands.add_parser(
        "agent", parents=[registering], help="keep the registration current, with a status line"
    )
    agent.add_argument("--interval", type=float, default=60.0, help="seconds between checks")
    agent.add_argument("--iterations", type=int, default=None, help="stop after N checks")
    agent.add_argument(
        "--console-port",
        type=int,
        default=52480,
        metavar="PORT",
        help="the local console's port on 127.0.0.1 (default 52480, or a free one if taken; "
        "0: any free port)",
    )
    agent.add_argument("--no-console", action="store_true", help="serve no local console")
    agent.add_argument(
        "--no-browser", action="store_true", help="do not open the console in a browser"
    )
    agent.add_argument(
        "--tray", action="store_true", help="show a tray icon (needs: pip install 'infer[tray]')"
    )
    agent.set_defaults(handler=cmd_node_agent)
    tray = node_commands.add_parser(
        "tray",
        parents=[configured],
        help="a tray icon for the agent running on this machine (infer[tray])",
    )
    tray.set_defaults(handler=cmd_node_tray)
