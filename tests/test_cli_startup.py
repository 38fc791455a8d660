"""`zoft --help` must stay fast: it may not import torch or transformers."""

import subprocess
import sys

from typer.testing import CliRunner

from zoft.cli import app

PROBE = """
import sys
from zoft.cli import app
try:
    app(["{arg}", "--help"] if "{arg}" else ["--help"])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "datasets", "numpy") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def run_probe(arg: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], capture_output=True, text=True, check=True)
    return out.stdout.rsplit("HEAVY:", 1)[1].strip()


def test_help_imports_no_torch():
    assert run_probe("") == ""


def test_train_help_imports_no_torch():
    assert run_probe("train") == ""


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "zoft", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("zoft ")


def test_list_shows_packaged_recipes():
    result = CliRunner().invoke(app, ["train", "--list"])
    assert result.exit_code == 0
    assert "quickstart" in result.output.split()
