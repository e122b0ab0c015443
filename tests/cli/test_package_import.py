"""The package imports without torch; its training names still resolve."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_cli_and_the_monitor_import_without_torch() -> None:
    code = (
        "import sys, edgetrain, edgetrain.cli, edgetrain.measure, edgetrain.config\n"
        "from edgetrain.cli.main import app\n"
        "print('torch' in sys.modules)"
    )
    assert _run(code) == "False"


def test_train_is_the_function_before_and_after_the_subpackage_is_imported() -> None:
    code = (
        "import edgetrain\n"
        "first = edgetrain.train.__module__\n"
        "from edgetrain.train import Callback, loop\n"
        "import edgetrain.train.api\n"
        "print(first, edgetrain.train.__module__, edgetrain.Callback is Callback,\n"
        "      callable(edgetrain.fit), 'torch' in __import__('sys').modules)"
    )
    assert _run(code) == "edgetrain.train.api edgetrain.train.api True True True"


def test_an_unknown_name_is_an_attribute_error() -> None:
    code = (
        "import edgetrain\ntry:\n    edgetrain.nope\nexcept AttributeError as exc:\n    print(exc)"
    )
    assert _run(code) == "module 'edgetrain' has no attribute 'nope'"
