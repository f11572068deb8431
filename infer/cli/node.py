"""The operator's commands: `infer node …` (detect, register, join, agent, status, doctor, …)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from infer.cli.errors import CommandError
from infer.config import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from infer.agent.credentials import NodeCredentials
    from infer.agent.detect import Detection
    from infer.agent.register import RegistrationOptions


def cmd_node_simulate(args: argparse.Namespace, settings: Settings) -> None:
    from infer.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        models=tuple(args.model or ["llama3.2:1b"]),
        tokens_per_second=args.tokens_per_second,
        ttft_ms=args.ttft_ms,
        error_rate=args.error_rate,
        hang=args.hang,
        drop_after_tokens=args.drop_after_tokens,
        seed=args.seed,
    )
    run_simulator(config, host=args.host, port=args.port)


def _given_key(args: argparse.Namespace) -> tuple[str, str] | None:
    """The key named on the command line or in INFER_API_KEY, and where it came from."""
    if getattr(args, "api_key", None):
        return str(args.api_key), "--api-key"
    if getattr(args, "api_key_file", None) is not None:
        try:
            if args.api_key_file == "-":
                return sys.stdin.readline().strip(), "stdin"
            with open(args.api_key_file) as handle:
                return handle.readline().strip(), args.api_key_file
        except OSError as exc:
            raise CommandError(f"cannot read {args.api_key_file}: {exc.strerror}") from exc
    if os.environ.get("INFER_API_KEY"):
        return os.environ["INFER_API_KEY"], "INFER_API_KEY"
    return None


def _stored(args: argparse.Namespace) -> tuple[Path, NodeCredentials | None]:
    """Where the node configuration is (--config, INFER_NODE_CONFIG, per OS) and what it holds."""
    from infer.agent import credentials

    path = credentials.ConfigLocation.resolve(getattr(args, "config", None)).path
    return path, credentials.load(path)


def _same_platform(one: str, other: str) -> bool:
    from infer.agent.platform import graphql_url

    return graphql_url(one) == graphql_url(other)


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    """The platform and key: --platform and --api-key(-file) or INFER_API_KEY, else the stored
    ones (`infer node join`). Fills in `args.platform` when it was not given."""
    platform, key, _ = _resolve(args)
    args.platform = platform
    return platform, key


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """The platform, the key and where the key came from. A stored key only ever goes to
    the platform it came from."""
    given = _given_key(args)
    path, stored = (None, None) if given and args.platform else _stored(args)
    platform = args.platform or (stored.platform if stored else None)
    if platform is None:
        raise CommandError(
            f"no --platform and no node configuration at {path}: run the "
            "`infer node join --platform URL --code CODE` line the dashboard shows"
        )
    if given is not None:
        return platform, *given
    if stored is not None and _same_platform(stored.platform, platform):
        return platform, stored.api_key, str(path)
    if stored is not None:
        raise CommandError(
            f"the key in {path} is for {stored.platform}, not {platform}; "
            "pass --api-key-file for that platform"
        )
    raise CommandError(
        "no API key: pass --api-key-file, set INFER_API_KEY, or run `infer node join`"
    )


def _detect(args: argparse.Namespace) -> Detection:
    from infer.agent.detect import detect

    return detect(
        ollama_url=args.ollama_url,
        exo_url=args.exo_url,
        llamacpp_url=args.llamacpp_url,
        vllm_url=args.vllm_url,
        lmstudio_url=args.lmstudio_url,
    )


def _quiet_http() -> None:
    # httpx logs every request at INFO: noise for an operator, and it would break the live line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _warn_about(
    args: argparse.Namespace, graphql_url: str, options: RegistrationOptions | None = None
) -> None:
    from infer.agent.platform import is_plaintext

    if is_plaintext(graphql_url):
        print(
            f"infer: warning: {graphql_url} is plain http; the API key travels unencrypted",
            file=sys.stderr,
        )
    tunnel = options.tunnel if options is not None else getattr(args, "tunnel", False)
    if not tunnel and (options.endpoint if options is not None else args.endpoint) is None:
        print(
            "infer: note: without --endpoint, the runtime's local address is registered; "
            "the platform must be able to reach it",
            file=sys.stderr,
        )


def cmd_node_detect(args: argparse.Namespace, settings: Settings) -> None:
    import json

    _quiet_http()
    print(json.dumps(_detect(args).to_json(), indent=2))


def _registration_options(args: argparse.Namespace) -> RegistrationOptions:
    from infer.agent.register import RegistrationOptions

    # What `join` stored fills in what is not given, so that `infer node agent` needs nothing.
    _, stored = _stored(args)
    if stored is not None and args.platform and not _same_platform(stored.platform, args.platform):
        stored = None
    _check_tunnel(args)
    # An --endpoint given now overrides a stored --tunnel, and --tunnel a stored endpoint.
    tunnel = getattr(args, "tunnel", False) or (
        not args.endpoint and stored is not None and stored.tunnel
    )
    return RegistrationOptions.parse(
        name=args.name or (stored.name if stored else None),
        runtime=args.runtime or (stored.runtime if stored else None),
        endpoint=args.endpoint or (stored.endpoint if stored and not tunnel else None),
        prices=args.price or (),
        default_price=args.default_price,
        tunnel=tunnel,
    )


def _check_tunnel(args: argparse.Namespace) -> None:
    if getattr(args, "tunnel", False) and args.endpoint:
        raise CommandError(
            "--tunnel and --endpoint exclude each other: through a tunnel the platform "
            "needs no endpoint"
        )


def _where(registration_tunnel: bool, endpoint: str) -> str:
    return "reached through its tunnel" if registration_tunnel else f"at {endpoint}"


def cmd_node_register(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent import credentials
    from infer.agent.platform import PlatformClient
    from infer.agent.register import build_registration

    options = _registration_options(args)
    _quiet_http()
    with PlatformClient(*_connection(args)) as platform:
        _warn_about(args, platform.url, options)
        registration = build_registration(_detect(args), options)
        node = platform.register_node(registration)
    path, stored = _stored(args)
    if stored is not None and _same_platform(stored.platform, args.platform):
        credentials.save(path, stored.with_node(node.id))  # for `infer node status`
    reason = f" ({node.status_reason})" if node.status_reason else ""
    print(
        f"registered {registration.runtime} node '{registration.name}' "
        f"{_where(registration.tunnel, registration.endpoint)} (id {node.id}): "
        f"{node.status}{reason}"
    )
    print(f"models: {', '.join(registration.models) or 'none yet'}")


def cmd_node_join(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent import credentials
    from infer.agent.join import join
    from infer.agent.platform import PlatformClient, graphql_url

    options = _registration_options_given(args)
    path = credentials.ConfigLocation.resolve(args.config).path
    _quiet_http()
    _warn_about(args, graphql_url(args.platform), options)
    joined = join(
        platform=args.platform,
        code=args.code,
        options=options,
        path=path,
        detect=lambda: _detect(args),
        client=lambda key: PlatformClient(args.platform, key),
        force=args.force,
    )
    registration, node = joined.registration, joined.node
    reason = f" ({node.status_reason})" if node.status_reason else ""
    print(f"joined {joined.stored.platform}; the node key is in {path}")
    print(
        f"registered {registration.server or registration.runtime} node '{registration.name}' "
        f"{_where(registration.tunnel, registration.endpoint)} (id {node.id}): "
        f"{node.status}{reason}"
    )
    print(f"models: {', '.join(registration.models) or 'none yet'}")
    print("next: `infer node agent` keeps it current (`infer node service install` runs it)")


def _registration_options_given(args: argparse.Namespace) -> RegistrationOptions:
    from infer.agent.register import RegistrationOptions

    _check_tunnel(args)
    return RegistrationOptions.parse(
        name=args.name,
        runtime=args.runtime,
        endpoint=args.endpoint,
        prices=args.price or (),
        default_price=args.default_price,
        tunnel=args.tunnel,
    )


def cmd_node_status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from infer.agent.platform import PlatformClient
    from infer.agent.status import read_nodes

    _quiet_http()
    platform_url, key = _connection(args)
    _, stored = _stored(args)
    node_ids = stored.node_ids if stored and _same_platform(stored.platform, platform_url) else ()
    with PlatformClient(platform_url, key) as platform:
        report = read_nodes(platform, node_ids)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return report.exit_status


def cmd_node_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from infer.agent.doctor import Setup, examine, passed
    from infer.agent.platform import PlatformClient
    from infer.agent.register import parse_runtime
    from infer.errors import BadInput

    _quiet_http()
    path, problem, stored = _config_path(args), None, None
    platform: str | None
    key: str | None
    source: str | None
    try:
        platform, key, source = _resolve(args)
        stored = _stored(args)[1]
    except (CommandError, BadInput) as exc:
        platform = key = source = None
        problem = exc.message if isinstance(exc, BadInput) else None
    mine = stored is not None and platform is not None and _same_platform(stored.platform, platform)
    setup = Setup(
        config_path=path,
        key_source=source,
        config_problem=problem,
        platform=platform,
        node_ids=stored.node_ids if stored is not None and mine else (),
    )
    runtime = args.runtime or (stored.runtime if stored is not None and mine else None)
    checks = examine(
        setup,
        detect=lambda: _detect(args),
        runtime=parse_runtime(runtime) if runtime else None,
        client=(lambda: PlatformClient(platform, key)) if platform and key else None,
    )
    print("\n".join(check.render() for check in checks))
    return 0 if passed(checks) else 1


def _config_path(args: argparse.Namespace) -> Path:
    from infer.agent.credentials import ConfigLocation

    return ConfigLocation.resolve(getattr(args, "config", None)).path


def cmd_node_service_install(args: argparse.Namespace, settings: Settings) -> None:
    from pathlib import Path

    from infer.agent.service import agent_command, install, service_file

    service = service_file(
        home=Path.home(), command=agent_command(), config=_config_path(args).absolute()
    )
    if args.dry_run:
        print(f"# {service.path}")
        print(service.text, end="")
        return
    written = install(service, force=args.force)
    print(f"{'wrote' if written else 'already installed:'} {service.path}")
    print("then:")
    print("\n".join(f"  {step}" for step in service.next_steps))
