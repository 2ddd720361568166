"""The docs (docs/*.md and README.md) name only what exists: every `headrace ...` command line
uses real subcommands and options, every Prometheus metric named is one the code exports,
every HEADRACE_* variable named is read by the code and every one the code reads is in the
README's settings table, and every job-spec YAML shown parses.

The README's ```sh blocks also run in tests/integration/test_readme.py; these checks are the
cheap ones that cover every page, prose and `console`/`text` blocks included."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from headrace.cli import cli
from headrace.errors import HeadraceError
from headrace.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PAGES = [*sorted((REPO_ROOT / "docs").glob("*.md")), README]
PRODUCT = ("headrace", "serving", "streams", "training", "security")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_:\[\]]*|X")  # NAME, DIR, N, TEACHER[:VERSION], ...


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def doc_commands(text: str) -> list[str]:
    """`headrace ...` command lines: from code blocks (one per line, split at shell operators,
    `$ ` prompts, `VAR=x` prefixes, comments and trailing `&` dropped; an indented line of
    `[--options]` continues a usage line) and inline code spans."""
    found = []
    for block in _code_blocks(text):
        block = re.sub(r"\n\s+(?=\[--)", " ", block.replace("\\\n", " "))
        for line in block.splitlines():
            for part in re.split(r"\|\||&&|;|(?<= )\|(?= )", line.strip().removeprefix("$ ")):
                part = re.sub(r"^(\w+=\S+ )+", "", part.strip())
                if part.startswith("headrace "):
                    part = re.split(r" #|>|\s{2,}\(", part)[0]  # a comment, a redirect
                    found.append(part.rstrip(" &"))
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    found += re.findall(r"`(headrace [^`]+)`", prose)
    return found


def _options(command: click.Command) -> dict[str, click.Option | None]:
    names: dict[str, click.Option | None] = {"--help": None, "-h": None}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    return names


def command_problems(line: str) -> list[str]:
    """Unknown subcommands and options of one documented command line, and values outside a
    choice. Values are otherwise not checked (docs use placeholders: NAME, DIR, ...), and
    `[...]` marks optional parts, `a|b` alternatives."""
    line = re.sub(r"(?<=\S)\[([^\]\s]*)\]", r"\1", line)  # NAME[:VERSION] is one word
    words = shlex.split(re.sub(r"[\[\]]", " ", line).replace("...", "X"))
    command: click.Command = cli
    path = "headrace"
    problems = []
    rest = iter(words[1:])
    for word in rest:
        if word.startswith("-") and word != "-":
            name, has_value, value = word.partition("=")
            options = _options(command)
            if name not in options:
                problems.append(f"{path}: no option {name}")
                continue
            option = options[name]
            if option is None or option.is_flag or option.count:
                continue
            if not has_value:
                value = next(rest, "")
            if isinstance(option.type, click.Choice) and not PLACEHOLDER.fullmatch(value):
                fold = str.lower if not option.type.case_sensitive else str
                choices = {fold(str(c)) for c in option.type.choices}
                problems += [
                    f"{path} {name}: {v!r} is not one of {sorted(choices)}"
                    for v in value.split("|")
                    if fold(v) not in choices
                ]
        elif isinstance(command, click.Group):
            names = word.split("|")
            problems += [f"{path}: no subcommand {n!r}" for n in names if n not in command.commands]
            if names[0] not in command.commands:
                break
            command = command.commands[names[0]]
            path += f" {names[0]}"
    return problems


def test_every_documented_command_line_parses() -> None:
    problems = []
    count = 0
    for page in PAGES:
        for line in doc_commands(page.read_text()):
            count += 1
            problems += [f"{page.name}: `{line}`: {p}" for p in command_problems(line)]
    assert count > 100, count  # the extraction still finds the docs' commands
    assert problems == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("headrace serve --no-such-flag 1", "no option --no-such-flag"),
        ("headrace trian --model lenet5", "no subcommand 'trian'"),
        ("headrace compress --model NAME --quant int8|int3", "'int3' is not one of"),
        ("headrace train --optimizer Adam", "'Adam' is not one of"),
        ("headrace watermark keygen|embed|check", "no subcommand 'check'"),
    ],
)
def test_the_command_check_finds_mistakes(line: str, expected: str) -> None:
    assert any(expected in p for p in command_problems(line)), command_problems(line)


def test_defaults_shown_in_usage_lines_are_the_clis() -> None:
    """`[--flag VALUE]` in a usage line shows the value the flag takes when left out."""
    wrong, count = [], 0
    for page in PAGES:
        for line in doc_commands(page.read_text()):
            command: click.Command = cli
            for word in line.split()[1:]:
                if isinstance(command, click.Group) and word in command.commands:
                    command = command.commands[word]
            for flag, value in re.findall(r"\[(--[a-z-]+) (-?[0-9][0-9.e-]*)\]", line):
                option = _options(command).get(flag)
                default = None if option is None else option.default
                if not isinstance(default, int | float):  # no default, or one the code picks
                    continue
                count += 1
                if float(value) != float(default):
                    wrong.append(f"{page.name}: {flag} {value}, but the default is {default}")
    assert count >= 6, count
    assert wrong == []


# -- metrics -------------------------------------------------------------------------------

METRIC_LIKE = re.compile(
    r"`((?:inference|stream|training|model|autoscaler)_[a-z0-9_]+)(?:\{[^`]*)?`"
)
NOT_METRICS = {
    "model_bytes": "a metric in a version's metadata.json (docs/compression.md)",
    "model_repository": "the repository folder",
    "stream_infer": "tritonclient's streaming call",
}


def exported_metric_names() -> set[str]:
    """Every series name the server, stream worker and training agent expose."""
    from serving.metrics import ServingMetrics
    from streams.broker_watch import BrokerWatch
    from streams.job_metrics import TrainingMetrics
    from streams.metrics import StreamMetrics

    serving = ServingMetrics(lambda: [("m", "1", 0, 0, 1)], privacy=lambda: [("m", "1", 1, 1e-5)])
    stream = StreamMetrics(serving)
    stream.watch_lag(lambda: [("inference-requests", 0, 0)])
    stream.watch_paused(lambda: 0)
    stream.watch_broker(BrokerWatch("localhost:9092", "stream worker"))
    training = TrainingMetrics()
    training.watch_broker(BrokerWatch("localhost:9092", "training agent"))
    names = set()
    for registry in (serving.registry, training.registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names.update(f"{family.name}{end}" for end in ("_bucket", "_count", "_sum"))
    return names


def _not_metric_names() -> set[str]:
    """Identifiers with a metric's prefix that name something else: modules, error reasons."""
    modules = {p.stem for package in PRODUCT for p in (REPO_ROOT / package).rglob("*.py")}
    modules |= {p.stem for p in (REPO_ROOT / "tests").rglob("*.py")}
    reasons = {cls.reason for cls in _subclasses(HeadraceError)} | {"version_removed"}
    return modules | reasons | set(NOT_METRICS)


def _subclasses(cls: type[HeadraceError]) -> list[type[HeadraceError]]:
    return [cls, *(found for sub in cls.__subclasses__() for found in _subclasses(sub))]


def test_every_metric_named_in_the_docs_is_exported() -> None:
    exported = exported_metric_names()
    named = {(page.name, name) for page in PAGES for name in METRIC_LIKE.findall(page.read_text())}
    assert len({name for _, name in named} & exported) > 20  # the extraction still finds them
    skip = _not_metric_names()
    assert sorted((p, n) for p, n in named if n not in exported and n not in skip) == []


# -- environment variables -----------------------------------------------------------------


def _code_env_names() -> set[str]:
    """HEADRACE_* variables the product reads: the settings and string literals in its code."""
    names = {f"HEADRACE_{field.upper()}" for field in Settings.model_fields}
    for package in PRODUCT:
        for path in (REPO_ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](HEADRACE_[A-Z_]+)[\"']", path.read_text()))
    return names


def test_every_environment_variable_is_in_the_readme_table() -> None:
    text = README.read_text()
    table = text[text.index("## Settings\n") : text.index("\n## ", text.index("## Settings\n") + 1)]
    in_table = set(re.findall(r"^\| `(HEADRACE_[A-Z_]+)` \|", table, flags=re.M))
    test_hooks = {"HEADRACE_DISTRIBUTED_FAULT"}  # fault injection for tests: docs/distributed.md
    assert _code_env_names() - test_hooks - in_table == set()


def test_every_environment_variable_named_in_the_docs_is_read() -> None:
    code = _code_env_names()
    named = {
        (page.name, name)
        for page in PAGES
        for name in re.findall(r"\bHEADRACE_[A-Z_]*[A-Z]\b", page.read_text())
    }
    test_only = {"HEADRACE_SLOW_TESTS"}  # read by tests/conftest.py (make test-slow)
    assert sorted((p, n) for p, n in named if n not in code | test_only) == []


# -- job specs -----------------------------------------------------------------------------


def _yaml_blocks() -> list[tuple[str, str]]:
    return [
        (page.name, block)
        for page in PAGES
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), flags=re.S)
    ]


def _is_search_space(document: object) -> bool:
    return isinstance(document, dict) and all(
        isinstance(entry, dict) and "_type" in entry for entry in document.values()
    )


def _spec_documents() -> list[tuple[str, str]]:
    """Example job specs, and the docs' YAML blocks whose keys are job-spec keys."""
    from training.config import TrainConfig
    from training.job_spec import TrainingJobSpec

    keys = set(TrainConfig.model_fields) | set(TrainingJobSpec.model_fields)
    examples = sorted(REPO_ROOT.glob("examples/jobs/*"))
    found = [(str(p.relative_to(REPO_ROOT)), p.read_text()) for p in examples]
    for source, block in _yaml_blocks():
        document = yaml.safe_load(block)
        if isinstance(document, dict) and set(document) <= keys and not _is_search_space(document):
            found.append((source, block))
    return found


def test_every_job_spec_shown_parses() -> None:
    from training.job_spec import parse_job_spec

    documents = _spec_documents()
    assert len(documents) >= 6, [source for source, _ in documents]
    for source, text in documents:
        parse_job_spec(text, available_cpus=2, source=source)  # raises listing every problem


def test_every_search_space_shown_is_valid() -> None:
    from training.tuning.search_space import DEFAULT_SEARCH_SPACE, check_search_space

    spaces = [
        (s, yaml.safe_load(b)) for s, b in _yaml_blocks() if _is_search_space(yaml.safe_load(b))
    ]
    assert DEFAULT_SEARCH_SPACE in [space for _, space in spaces], "docs/tuning.md's default"
    for source, space in spaces:
        check_search_space(space, source=source)  # raises listing every problem


def test_the_readme_table_of_flags_and_spec_keys_is_right() -> None:
    """Each row's flags are `headrace train`'s and its first key parses as a spec (or names a
    field); the agent-owned row names agent-owned fields; and every flag the table leaves out
    is its field's name with `_` for `-`, as the README says."""
    from training.config import TrainConfig
    from training.job_spec import AGENT_OWNED, parse_job_spec

    text = README.read_text()
    start = text.index("| `headrace train` flag | job spec key |")
    rows = text[start : text.index("\n\n", start)].splitlines()[2:]
    options = {
        name: option.name
        for name, option in _options(cli.commands["train"]).items()
        if option is not None and option.name is not None
    }
    listed: set[str] = set()
    for row in rows:
        flags_cell, keys_cell = row.strip("|").split(" | ")
        flags = re.findall(r"`(--[a-z-]+)`", flags_cell)
        assert flags and set(flags) <= set(options), row
        fields = {options[flag] for flag in flags}
        listed |= fields
        spans = re.findall(r"`([^`]+)`", keys_cell)
        if not spans:
            assert fields <= AGENT_OWNED, row
        elif ":" in spans[0]:
            parse_job_spec(spans[0], available_cpus=2, source=row[:40])
        else:
            assert spans[0] in TrainConfig.model_fields, row
    assert len(rows) >= 5
    train_options = [p for p in cli.commands["train"].params if isinstance(p, click.Option)]
    for option in train_options:
        if option.name not in listed and option.opts != ["--json"]:
            field = option.opts[0].removeprefix("--").replace("-", "_")
            assert field == option.name and field in TrainConfig.model_fields, option.opts


def test_security_md_names_every_agent_owned_field() -> None:
    from training.job_spec import AGENT_OWNED

    text = (REPO_ROOT / "docs" / "security.md").read_text()
    section = text[text.index("### Training jobs") : text.index("### Input and resource")]
    assert {name for name in AGENT_OWNED if f"`{name}`" not in section} == set()


def test_the_dlq_reasons_the_readme_lists_exist() -> None:
    text = README.read_text()
    start = text.index("A DLQ record (`DLQRecord`")
    listed = re.findall(r"`([a-z_]+)`", text[start : text.index("\n\n", start)])
    codec = (REPO_ROOT / "streams" / "codec.py").read_text()
    rejected = re.findall(r"\"([a-z_]+)\",?\s*\)(?: from None)?$", codec, flags=re.M)
    reasons = {cls.reason for cls in _subclasses(HeadraceError)} | set(rejected)
    fields = {"request_id", "error_code", "reason", "message", "stage", "payload", "source"}
    assert len(listed) > 10
    assert [code for code in listed if code not in reasons | fields | {"stream_dlq_total"}] == []


def test_the_config_json_defaults_the_readme_gives_are_the_models() -> None:
    from serving.model_config import (
        MAX_BATCH_SIZE,
        MAX_INSTANCES,
        MAX_QUEUE_DELAY_US,
        AutoscalingConfig,
        DynamicBatchingConfig,
        ModelConfig,
    )

    text = README.read_text()
    start = text.index("- per model in `config.json`, with their defaults:")
    bullet = text[start : text.index("\n\n", start)]
    stated = re.findall(r"`(\w+)`\s+(\d[\d,.]*|true|false)\b", bullet)
    defaults = {
        name: field.default
        for model in (ModelConfig, DynamicBatchingConfig, AutoscalingConfig)
        for name, field in model.model_fields.items()
    }
    assert len(stated) >= 8, stated
    for name, value in stated:
        expected = {"true": True, "false": False}.get(value, value.replace(",", ""))
        assert str(defaults[name]).lower() in {str(expected).lower(), f"{expected}.0"}, name
    bounds = [int(n.replace(",", "")) for n in re.findall(r"at\s+most\s+(\d[\d,]*)", bullet)]
    assert bounds == [MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US, MAX_INSTANCES, MAX_INSTANCES], bounds


def test_the_protocol_extensions_the_readme_lists_are_the_servers() -> None:
    from serving.dataplane import EXTENSIONS

    text = " ".join(README.read_text().split())
    start = text.index("`ServerMetadata` lists the ones offered (")
    listed = re.findall(r"`(\w+)`", text[start : text.index(")", start)])
    assert sorted(listed) == sorted(["ServerMetadata", *EXTENSIONS])
