"""docs/operating.md, docs/python.md and the README's operating section say what the code does:
the Python examples use only real arguments, the metric and alert tables name exactly what
qfsync writes and ships, and every documented command line parses."""

import ast
import inspect
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import qfsync
from qfsync import runs
from qfsync.cli import main
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
OPERATING = (ROOT / "docs" / "operating.md").read_text()
PYTHON = (ROOT / "docs" / "python.md").read_text()
README = (ROOT / "README.md").read_text()


def fences(doc: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", doc, re.MULTILINE | re.DOTALL)


def first_cells(doc: str) -> list[str]:
    return re.findall(r"^\| `([\w<>]+)` \|", doc, re.MULTILINE)


def test_python_examples_call_real_arguments():
    """Each Python example parses, and every keyword it passes to qfsync.sync or qfsync.jobs
    is a parameter of that function."""
    blocks = fences(PYTHON, "python")
    assert len(blocks) == 3
    calls = 0
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "qfsync"
            ):
                parameters = inspect.signature(getattr(qfsync, node.func.attr)).parameters
                assert {k.arg for k in node.keywords} <= parameters.keys(), node.func.attr
                calls += 1
    assert calls >= 4


def test_documented_options_are_the_api_parameters():
    """The options docs/python.md lists for qfsync.sync are its parameters, all of them."""
    section = PYTHON.split("## The same options as the command")[1].split("## ")[0]
    named = set(re.findall(r"`(\w+)`", section.split("`qfsync.jobs` takes")[0]))
    parameters = set(inspect.signature(qfsync.sync).parameters)
    assert parameters <= named


def test_metric_table_names_what_a_sync_writes(tmp_path, fake_api):
    """The metrics table of docs/operating.md has a row for each metric a sync writes, the
    run's counts as one pattern row, and no row for a metric that does not exist."""
    api = fake_api(30)
    path = tmp_path / "q.prom"
    qfsync.sync(
        f"sqlite:///{tmp_path / 'q.db'}",
        endpoint=api.url,
        access_key=DEMO_ACCESS_KEY,
        secret_key=DEMO_SECRET_KEY,
        metrics_file=path,
    )
    written = {family.name for family in text_string_to_metric_families(path.read_text())}
    counts = {f"qfsync_last_run_{name}" for name in runs.COUNTS}
    documented = {name for name in first_cells(OPERATING) if name.startswith("qfsync_")}
    assert documented == written - counts | {"qfsync_last_run_<count>"}


def test_alert_table_names_the_shipped_alerts():
    """The alerts table of docs/operating.md lists exactly the alerts of monitoring/alerts.yml."""
    shipped = re.findall(r"- alert: (\w+)", (ROOT / "monitoring" / "alerts.yml").read_text())
    documented = [name for name in first_cells(OPERATING) if name.startswith("Qfsync")]
    assert len(shipped) == 3 and documented == shipped


def command_lines() -> list[list[str]]:
    """Every qfsync command line of the cron examples and the CronJob, as arguments."""
    lines = []
    for doc in (OPERATING, README):
        for match in re.finditer(r"\.venv/bin/qfsync ([^>|\n]+)", doc):
            lines.append([arg for arg in shlex.split(match[1], comments=True) if arg != "&"])
    for match in re.finditer(r"args: (\[[^\]]+\])", OPERATING):
        lines.append(ast.literal_eval(match[1].replace("\n", " ")))
    return lines


@pytest.mark.parametrize("args", command_lines(), ids=" ".join)
def test_documented_command_lines_parse(args):
    """Each documented command line's options exist (parsed, not run: --help)."""
    done = CliRunner().invoke(main, [*args, "--help"])
    assert done.exit_code == 0, done.output


@pytest.mark.parametrize("doc", [OPERATING, README], ids=["operating.md", "README.md"])
def test_cronjob_runs_the_qfsync_command(doc):
    """Each CronJob's container names qfsync as its command: `args` alone only replace the
    image's CMD, so on a plain Python image they would run `sync` as a program."""
    container = doc.split("kind: CronJob")[1].split("```")[0]
    assert re.search(r'^\s+command: \["qfsync"\]', container, re.MULTILINE)
    assert container.index("command:") < container.index("args:")
