"""Where unitune's assets live, the same way from a checkout, an editable install and a wheel.

Assets are the folders beside the code in a checkout: `peft/` (method presets), `templates/`, `data/`
(the dataset registry and the embedded synthetic data), `models/` (the embedded tiny base), `eval/`
(benchmark definitions) and `configs/` (DeepSpeed and accelerate configs). A wheel carries them as package data under `unitune/assets/`; a checkout or
an editable install reads them in place. `UNITUNE_HOME` names another root laid out like a checkout
(for a user's own presets, templates and registry). Datasets fetched for the registry live elsewhere:
see `data_dir()`.
"""

from __future__ import annotations

import os
from pathlib import Path

from unitune.errors import UnituneError

ASSET_KINDS = ("peft", "templates", "data", "models", "eval", "configs")
_PACKAGE = Path(__file__).resolve().parent


def asset_root() -> Path:
    """The folder holding peft/, templates/, data/, models/ and eval/."""
    home = os.environ.get("UNITUNE_HOME")
    if home:
        if not Path(home).is_dir():
            raise UnituneError(f"UNITUNE_HOME={home}: no such directory")
        return Path(home)
    bundled = _PACKAGE / "assets"  # installed from a wheel: package data
    return bundled if bundled.is_dir() else _PACKAGE.parent  # a checkout or an editable install


def asset_dir(kind: str) -> Path:
    """One asset folder; a one-line error naming it and where it was looked for when it is missing."""
    if kind not in ASSET_KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; known: {', '.join(ASSET_KINDS)}")
    path = asset_root() / kind
    if not path.is_dir():
        source = "UNITUNE_HOME" if os.environ.get("UNITUNE_HOME") else "the unitune installation"
        raise UnituneError(f"unitune's {kind}/ folder is missing: looked for {path} ({source}); "
                           f"reinstall unitune or set UNITUNE_HOME to a checkout")
    return path


def asset(kind: str, relative: str) -> Path:
    """A file or folder inside an asset folder, which must exist."""
    path = asset_dir(kind) / relative
    if not path.exists():
        raise UnituneError(f"unitune asset {kind}/{relative} is missing: looked for {path}")
    return path


def embedded_base() -> Path:
    """The embedded tiny model, the default --model_name_or_path."""
    return asset_dir("models") / "unitune-tiny"


def data_dir() -> Path:
    """Where registered datasets that are not shipped (Alpaca-CoT's, ...) are looked for and fetched to:
    --data_dir, else $UNITUNE_DATA_DIR, else ~/.cache/unitune/data."""
    return Path(os.environ.get("UNITUNE_DATA_DIR") or Path.home() / ".cache" / "unitune" / "data")
