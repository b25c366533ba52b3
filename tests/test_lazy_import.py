"""Start-up: ``import mossvl`` and ``mossvl --help`` load neither torch nor transformers, the public names load on
first use, registration with transformers' Auto classes still happens whatever the import order, and the OpenMP
wait policy is set for torch unless the user set one. Each check runs in a fresh interpreter."""

import os
import subprocess
import sys

import pytest

REGISTERED = (
    "from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
    "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING; "
    "assert 'moss_vl' in CONFIG_MAPPING and 'mossvl-int8-dynamic' in AUTO_QUANTIZER_MAPPING"
)


def run_python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**environment, **env}, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_mossvl_loads_neither_torch_nor_transformers():
    code = "import sys, mossvl; print(sorted(m for m in ('torch', 'transformers', 'av') if m in sys.modules))"
    assert run_python(code) == "[]"


def test_cli_help_and_one_subcommand_load_neither_torch_nor_the_others():
    code = (
        "import sys; from mossvl.cli.main import build_parser; parser, modules = build_parser(['ask']); "
        "print(sorted(modules), 'torch' in sys.modules, 'mossvl.cli.quantize' in sys.modules)"
    )
    assert run_python(code) == "['ask'] False False"
    result = subprocess.run([sys.executable, "-m", "mossvl", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "quantize" in result.stdout


def test_public_names_load_on_first_use():
    code = (
        "import mossvl; from mossvl import Engine, load; "
        "print(Engine.__module__, load.__module__, 'MossVLProcessor' in dir(mossvl))"
    )
    assert run_python(code) == "mossvl.inference.engine mossvl.inference.api True"
    code = "import mossvl\ntry:\n    mossvl.nothing\nexcept AttributeError as exc:\n    print(exc)"
    assert run_python(code) == "module 'mossvl' has no attribute 'nothing'"


@pytest.mark.parametrize(
    "imports",
    [
        "import mossvl; import transformers",
        "import transformers; import mossvl",
        "import mossvl; from mossvl.inference.engine import Engine",
        "import mossvl.model",
        "from mossvl.processing.processor import MossVLProcessor",
    ],
)
def test_auto_classes_know_moss_vl_whatever_the_import_order(imports):
    run_python(f"{imports}; {REGISTERED}")


def test_the_openmp_wait_policy_is_passive_unless_the_user_set_one():
    code = "import os, mossvl; print(os.environ['OMP_WAIT_POLICY'])"
    assert run_python(code) == "PASSIVE"
    assert run_python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_ask_path_loads_no_training_or_plotting_code():
    code = (
        "import sys; from mossvl.cli import ask; from mossvl.inference.engine import engine_for; "
        "print(sorted(m for m in ('matplotlib', 'peft', 'transformers.trainer', 'fastapi') if m in sys.modules))"
    )
    assert run_python(code) == "[]"
