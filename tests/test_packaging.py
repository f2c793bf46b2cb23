"""Installs that stay true: the dependency lists cover every import, the lock satisfies the ranges, a wheel
works outside the checkout, and `unitune env` reports the install."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# listed packages that no file imports by name, and why they are listed all the same
USED_WITHOUT_IMPORT = {
    "accelerate": "transformers' Trainer requires it: it places the model and drives the processes",
    "bitsandbytes": "transformers loads it for --quantization_bit 4|8",
    "sentencepiece": "transformers loads it for the sentencepiece tokenizers of ChatGLM, Baichuan, InternLM",
    "tensorboard": "transformers' TensorBoardCallback writes the --report_to tensorboard logs with it",
    "pytest-timeout": "a pytest plugin, loaded by pytest (--timeout)",
    "setuptools": "builds the wheel in tests/test_packaging.py (pip wheel --no-build-isolation)",
    "deepspeed": "transformers' Trainer loads it for --deepspeed (GPU machines only)",
    "einops": "the InternLM2 checkpoint's own modeling file imports it: the reference its logits are tested against",
}
NOT_IN_TEST_ENV = {"deepspeed": "needs GPUs: CI and this suite have none, so the lock does not hold it",
                   "vllm": "--infer_backend vllm needs a CUDA GPU: CI and this suite have none, so the lock does not "
                           "hold it (unitune/serve/vllm_engine.py imports it only when chosen)"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0]).lower()


def _requirements() -> dict[str, str]:
    """canonical name -> requirement line, from requirements.txt and every pyproject extra."""
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        lines += extra
    return {_name(line): line for line in lines if line}


def _imports(folders: list[str]) -> dict[str, str]:
    """top-level module -> first file importing it, for every import statement (also inside functions)."""
    found: dict[str, str] = {}
    files = [p for folder in folders for p in (REPO / folder).rglob("*.py")] + list(REPO.glob("*.py"))
    for path in files:
        if "fixtures" in path.parts:  # checkpoint code that transformers imports, not unitune's
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]  # pytest.importorskip("pexpect")
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _distributions(module: str, owners: dict) -> set[str]:
    """The distributions providing `module`; a GPU-only extra absent here is its own distribution by name."""
    found = {_name(d) for d in owners.get(module, [])}
    return found or ({_name(module)} if _name(module) in NOT_IN_TEST_ENV else set())


def _third_party(modules: dict[str, str]) -> dict[str, str]:
    local = {"unitune", "tests", "bench", "tools"} | {p.stem for p in REPO.glob("*.py")}
    return {m: f for m, f in modules.items() if m not in sys.stdlib_module_names and m not in local}


def test_every_third_party_import_is_covered_by_a_requirement():
    """Walks the imports of unitune/, the entry scripts, bench/, tools/ and tests/: each third-party module
    belongs to a distribution that requirements.txt or a pyproject extra lists."""
    owners = metadata.packages_distributions()
    listed = set(_requirements())
    uncovered = []
    for module, where in sorted(_third_party(_imports(["unitune", "bench", "tools", "tests"])).items()):
        dists = _distributions(module, owners)
        if not dists & listed:
            uncovered.append(f"{module} (imported in {where}; distribution {sorted(dists) or 'not installed'})")
    assert not uncovered, f"imported but no requirement covers it: {uncovered}"


def test_every_listed_requirement_is_used():
    owners = metadata.packages_distributions()
    imported = {d for m in _third_party(_imports(["unitune", "bench", "tools", "tests"]))
                for d in _distributions(m, owners)}
    unused = sorted(set(_requirements()) - imported - set(USED_WITHOUT_IMPORT))
    assert not unused, f"listed but nothing imports them (remove, or say why in USED_WITHOUT_IMPORT): {unused}"


def test_the_lock_satisfies_the_ranges_and_pins_every_requirement():
    from packaging.requirements import Requirement

    from unitune.env import read_lock

    lock = read_lock(REPO / "requirements.lock")
    for name, line in _requirements().items():
        if name in NOT_IN_TEST_ENV:
            continue
        assert name in lock, f"{name} is required but not in requirements.lock"
        assert Requirement(line).specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} vs {line}"


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_subpackage_is_packaged_and_peft_folder_shadows_nothing():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "unitune").rglob("__init__.py")}
    assert on_disk <= packages, f"subpackages missing from pyproject's packages list: {sorted(on_disk - packages)}"
    assert not (REPO / "peft" / "__init__.py").exists()


def test_unitune_env_reports_versions_and_the_lock(tmp_path):
    from unitune.env import lock_differences

    proc = subprocess.run([sys.executable, "-m", "unitune", "env"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for field in ("unitune:", "python:", "torch:", "transformers:", "peft:", "bitsandbytes:", "accelerate:",
                  "CUDA:", "lock:"):
        assert any(line.startswith(field) for line in proc.stdout.splitlines()), field
    assert "requirements.lock" in proc.stdout
    moved, missing = lock_differences({"torch": "0.0.1", "no-such-package-here": "1.0"})
    assert moved == [f"torch {metadata.version('torch')} (lock: 0.0.1)"] and missing == ["no-such-package-here"]


def test_unitune_command_dispatches_and_refuses_unknown_commands():
    proc = subprocess.run([sys.executable, "-m", "unitune", "nope"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown command 'nope'")
    proc = subprocess.run([sys.executable, "-m", "unitune", "train", "--help"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--peft_type" in proc.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh virtualenv holding only the unitune wheel built from this checkout; its dependencies come
    from this environment's site-packages through a .pth line (the checkout itself is not on its path)."""
    import site
    import sysconfig

    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next((root / "dist").glob("unitune-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (Path(purelib) / "unitune_test_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    work = root / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "UNITUNE_HOME": ""}
    env.pop("UNITUNE_HOME")
    return venv, work, env


def test_wheel_installed_outside_the_checkout_finds_presets_templates_and_the_embedded_model(wheel_venv):
    venv, work, env = wheel_venv
    code = ("import unitune, unitune.paths as P, json; from unitune.methods import resolve_method; "
            "from unitune.templates import template_names; "
            "print(json.dumps([unitune.__file__, str(P.asset_root()), resolve_method('qlora')[1], "
            "resolve_method('adapter_h')[1], template_names()]))")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    module, root, qlora, adapter_h, templates = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(REPO) not in module and Path(root) == Path(module).parent / "assets"
    assert qlora["quantization_bit"] == 4 and qlora["lora_target_modules"]
    assert adapter_h["adapter_non_linearity"] == "tanh" and adapter_h["adapter_init"] == "bert"
    assert {"alpaca", "alpaca_zh", "chatml", "chatglm"} <= set(templates)


def test_wheel_console_command_fine_tunes_the_embedded_default(wheel_venv):
    venv, work, env = wheel_venv
    env = {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(venv / "bin" / "unitune-finetune"), "--max_steps", "2", "--eval_samples", "2",
                           "--eval_base", "false", "--output_dir", "out"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "out" / "adapter_config.json").is_file() and (work / "out" / "results.json").is_file()


def test_default_run_prints_no_third_party_warning(tmp_path):
    """`uniform_finetune.py --max_steps 2` on the embedded default: unitune's own log lines only, no warning
    text from the libraries underneath (they are filtered by message in unitune/quiet.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "uniform_finetune.py"), "--max_steps", "2", "--eval_samples",
                           "2", "--output_dir", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines()
             if re.search(r"Warning\b|warnings\.warn|deprecated|^\[transformers\]", line)
             or (re.search(r" (WARNING|ERROR) ", line) and not re.search(r" (WARNING|ERROR) unitune", line))]
    assert not noisy, noisy
