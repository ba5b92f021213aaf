"""Where things live: the one definition of the repository, artifact, taxonomy and data paths.

It sits in ``models`` because both sides may import ``models``: the service (``consumer``) and
training, which must not import each other. The trained artifacts and taxonomies are package
data of ``models``, so these paths hold in a source checkout and in an installed wheel alike;
``REPO_ROOT`` (reports, feature cache, the shared data beside the checkout) only means
something in a checkout.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
# "" in a checkout (`models.paths`), "shelver." in an installed wheel (`shelver.models.paths`, setup.py):
# what a module name built at run time (python -m, importlib) must start with.
PACKAGE_PREFIX = __name__[: -len("models.paths")]
# The folder holding the consumer/models/schemas/training packages: the checkout's root, or
# site-packages in an installed wheel.
REPO_ROOT = MODELS_DIR.parent
ARTIFACTS_DIR = MODELS_DIR / "artifacts"
TAXONOMIES_DIR = MODELS_DIR / "taxonomies"
DEFAULT_TAXONOMY = TAXONOMIES_DIR / "marketplace.yaml"
LABELS_DIR = REPO_ROOT / "training" / "labels"
# What Shelver writes (LiteRT conversions, image features, reports, newly trained artifacts): in a
# checkout its own folders; in an installed wheel site-packages is not ours to write (the Docker image
# runs unprivileged, and other distributions live there), so the user's XDG cache and data folders.
IS_CHECKOUT = (REPO_ROOT / "pyproject.toml").exists()
CACHE_DIR = REPO_ROOT / ".cache" if IS_CHECKOUT else (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shelver")
USER_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "shelver"
REPORTS_DIR = REPO_ROOT / "reports" if IS_CHECKOUT else USER_DATA_DIR / "reports"
# Where `shelver train` writes a new artifact by default (the service reads ARTIFACTS_DIR unless told).
TRAINED_ARTIFACTS_DIR = ARTIFACTS_DIR if IS_CHECKOUT else USER_DATA_DIR / "artifacts"

def _git_dir(root: Path) -> Path | None:
    """The repository folder holding ``config``: ``.git``, or for a worktree the one its ``.git`` file names."""
    dot = root / ".git"
    if dot.is_dir():
        return dot
    try:
        line = dot.read_text(errors="replace").strip()
    except OSError:
        return None
    if not line.startswith("gitdir:"):
        return None
    git_dir = Path(line[len("gitdir:"):].strip())
    git_dir = git_dir if git_dir.is_absolute() else (root / git_dir).resolve()
    common = git_dir / "commondir"  # a worktree's config lives in the main repository's folder
    if common.is_file():
        shared = Path(common.read_text(errors="replace").strip())
        git_dir = shared if shared.is_absolute() else (git_dir / shared).resolve()
    return git_dir


def _origin_checkout(root: Path) -> Path | None:
    """The local repository a checkout was cloned from (``git clone . /tmp/x``), read from its git config;
    a worktree's own checkout is that repository's. None for a remote or no repository."""
    git_dir = _git_dir(root)
    if git_dir is None:
        return None
    if (root / ".git").is_file() and git_dir.name == ".git":  # a worktree: the main checkout is beside it
        return git_dir.parent
    try:
        config = (git_dir / "config").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'\[remote\s+"origin"\][^\[]*?\n\s*url\s*=\s*(.+)', config, re.IGNORECASE)
    url = m.group(1).strip().strip('"') if m else ""
    if not url or "://" in url.replace("file://", "") or re.match(r"^(?:[\w.-]+@)?[\w.-]+:(?!/)", url):
        return None  # a remote repository (https://, ssh, scp-style host:path): nothing beside it here
    path = Path(url.removeprefix("file://"))
    path = path if path.is_absolute() else (root / path).resolve()
    return path.parent if path.name == ".git" else path  # cloned from /repo/.git: the checkout is /repo


# The shared data sits beside the project root (../shared/data). A clone made elsewhere on the same machine
# (a CI run's clean clone) finds it beside the checkout it was cloned from; SHELVER_DATA_DIR overrides both.
SHARED_DATA_DIRS = (REPO_ROOT.parent / "shared" / "data",
                    *([origin.parent / "shared" / "data"] if (origin := _origin_checkout(REPO_ROOT)) else []))


def shared_data(name: str) -> Path:
    """``name`` under the first shared data folder that has it (the first one if none does)."""
    return next((d / name for d in SHARED_DATA_DIRS if (d / name).exists()), SHARED_DATA_DIRS[0] / name)


DEFAULT_CATALOGUE_DIR = shared_data("fashion-product-images-small")
MARKETPLACE_DIR = shared_data("target-marketplace")


def catalogue_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The catalogue folder: explicit argument, else SHELVER_DATA_DIR, else ../shared/data/...

    The one rule for produce-sample (``consumer.cli.sample``) and training (``training.data``).
    """
    path = Path(explicit or os.environ.get("SHELVER_DATA_DIR") or DEFAULT_CATALOGUE_DIR)
    if not (path / "styles.csv").exists():
        raise FileNotFoundError(
            f"no catalogue at {path}: expected styles.csv and images/<id>.jpg "
            "(the Kaggle fashion-product-images-small layout); set SHELVER_DATA_DIR or pass --data"
        )
    return path


def _created(folder: Path) -> float:
    """The manifest's ``created_at`` as a POSIX time; a manifest without one counts by its file age."""
    manifest = folder / "manifest.json"
    try:
        created = datetime.fromisoformat(json.loads(manifest.read_text())["created_at"])
        return (created if created.tzinfo else created.replace(tzinfo=timezone.utc)).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return manifest.stat().st_mtime


def newest_artifact(root: Path = ARTIFACTS_DIR) -> Path:
    """The newest artifact folder with a manifest, by its manifest's ``created_at``."""
    candidates = [p for p in root.iterdir() if (p / "manifest.json").exists()] if root.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no trained artifact under {root}; run `shelver train`")
    return max(candidates, key=lambda p: (_created(p), p.name))


def resolve_artifact_pointer(path: Path) -> Path:
    """A pointer file holds one line: the artifact folder (relative paths from the file's folder).
    Symlinks are resolved, so a swapped link is seen as a new target.
    Anything unreadable (a symlink loop, a name too long, bytes that are not UTF-8, a file that is not a
    pointer) raises ``OSError`` with the reason, so callers handle one kind of error."""
    try:
        if path.is_file():
            with path.open("rb") as f:
                raw = f.read(4097)
            if len(raw) > 4096 or b"\0" in raw:
                raise OSError(f"{path} is not a pointer file (one line naming an artifact folder)")
            target = Path(raw.decode("utf-8").strip())
            path = target if target.is_absolute() else path.parent / target
        return path.resolve()
    except (RuntimeError, ValueError) as exc:  # a symlink loop (3.11); UnicodeDecodeError is a ValueError
        raise OSError(f"{path}: {exc}") from None
