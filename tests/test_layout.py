"""Layout: the top level the design card fixes, presets and templates that load, and no shadowed `peft`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TOP_FILES = ["uniform_finetune.py", "generate.py", "merge.py", "server.py", "web.py", "requirements.txt"]
TOP_FOLDERS = ["peft", "data", "templates", "eval", "tests"]


def test_import_peft_from_repo_root_is_the_library():
    """peft/ holds presets as data; run from the root it must not shadow the installed library."""
    code = "import peft, json; print(json.dumps([peft.__file__, hasattr(peft, 'LoraConfig')]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path, has_lora = json.loads(proc.stdout)
    # the venv may live inside the repo (.venv/): what matters is that it is not the presets folder
    assert path and "site-packages" in path and not Path(path).resolve().is_relative_to(REPO / "peft"), path
    assert has_lora
    assert not (REPO / "peft" / "__init__.py").exists()


@pytest.mark.parametrize("name", TOP_FILES)
def test_top_level_file(name):
    assert (REPO / name).is_file(), f"{name} missing at the repository root"


@pytest.mark.parametrize("name", TOP_FOLDERS)
def test_top_level_folder(name):
    folder = REPO / name
    assert folder.is_dir(), f"{name}/ missing at the repository root"
    assert any(folder.iterdir()), f"{name}/ is empty (git would not even keep it)"


def test_every_template_loads():
    from unitune.templates import get_template

    paths = sorted((REPO / "templates").glob("*.json"))
    assert {"alpaca", "alpaca_zh"} <= {p.stem for p in paths}
    for path in paths:
        raw = json.loads(path.read_text(encoding="utf-8"))
        template = get_template(path.stem)
        assert template.name == raw["name"] == path.stem
        text = template.prompt_for("INSTR", "INPUT", history=[["Q1", "A1"]])
        assert "INSTR" in text and "INPUT" in text and "Q1" in text and "A1" in text


def test_every_model_type_names_a_template():
    from unitune.models import MODELS
    from unitune.templates import get_template

    for spec in MODELS.values():  # an entry naming none (auto) takes the tokenizer's own chat template or alpaca
        assert get_template(spec.template).name == spec.template if spec.template else spec.name == "auto"


def test_every_peft_preset_names_a_registered_method():
    from unitune.methods import METHODS, resolve_method
    from unitune.train import GROUPS

    presets = sorted((REPO / "peft").glob("*.yaml"))
    assert presets
    flags = {name for group in GROUPS for name in group.__dataclass_fields__} | {"method"}
    for path in presets:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(raw, dict) and raw.get("method"), f"{path.name} names no method"
        method, _ = resolve_method(path.stem)
        assert method is METHODS[raw["method"]], path.name
        assert set(raw) <= flags, f"{path.name}: unknown keys {set(raw) - flags}"
