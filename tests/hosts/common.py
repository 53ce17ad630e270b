"""What every host builder needs: git trees at pinned commits, a venv whose torch is the CPU build, a record.

Nothing here knows a host; `comfyui.py` and `webui.py` do. Every step is idempotent: a rebuild reuses what is
already right (a tree at its commit, a venv with its packages) and redoes only what is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .specs import HostSpec, Source

#: The CPU torch every host venv gets; pip installs it from this machine's local file, and the constraint keeps a
#: host's unpinned `torch` (or torchvision / xformers pulling one) from swapping in a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def log(message: str) -> None:
    print(f"[hosts] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command, failing with its output; returns stdout."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"[hosts] failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}"
                         f"{proc.stderr[-3000:]}")
    return proc.stdout


def source_url(repo: str, mirrors: Path | None) -> str:
    """Where to clone `repo` from: `<mirrors>/<owner>+<name>/repo` (the layout of the search tool's fetch) or
    `<mirrors>/<owner>+<name>` when such a git directory exists, else https://github.com/<repo>.git."""
    if mirrors is not None:
        flat = mirrors / repo.replace("/", "+")
        for candidate in (flat / "repo", flat):
            if (candidate / "HEAD").is_file() or (candidate / ".git").exists():
                return str(candidate)
    return f"https://github.com/{repo}.git"


def checkout(source: Source, dest: Path, mirrors: Path | None) -> str:
    """`source.repo` at `source.commit` in `dest` (detached HEAD); returns the full commit hash.

    A local mirror's objects are read in place (git alternates) instead of fetched: a fetch packs every object and
    dies on the large blobs a mirror may lack. Files whose blobs are absent are left out of the tree (sparse
    checkout) and named in one log line.
    """
    url = source_url(source.repo, mirrors)
    if not (dest / ".git").exists():
        dest.mkdir(parents=True, exist_ok=True)
        run(["git", "init", "-q"], cwd=dest)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, text=True, capture_output=True).stdout.strip()
    if not head.startswith(source.commit):
        log(f"checking out {source.repo}@{source.commit} from {url} into {dest}")
        if not url.startswith("https://"):
            mirror_objects = Path(run(["git", "rev-parse", "--absolute-git-dir"], cwd=Path(url)).strip()) / "objects"
            (dest / ".git" / "objects" / "info" / "alternates").write_text(f"{mirror_objects}\n")
        have = subprocess.run(["git", "cat-file", "-e", source.commit + "^{commit}"], cwd=dest,
                              capture_output=True).returncode == 0
        if not have:
            run(["git", "fetch", "-q", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
                cwd=dest)
        absent = absent_files(dest, source.commit)
        if absent:
            log(f"{source.repo}@{source.commit}: {len(absent)} file(s) absent from the source, left out: "
                f"{', '.join(absent)}")
            run(["git", "sparse-checkout", "set", "--no-cone", "/*", *(f"!/{path}" for path in absent)], cwd=dest)
        run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", "--force", source.commit], cwd=dest)
    return run(["git", "rev-parse", "HEAD"], cwd=dest).strip()


def absent_files(repo: Path, commit: str) -> list[str]:
    """Paths of `commit`'s tree whose blobs the repository (with its alternates) does not have."""
    entries = [line.split("\t", 1) for line in run(["git", "ls-tree", "-r", commit], cwd=repo).splitlines()]
    blobs = [(meta.split()[2], path) for meta, path in entries if meta.split()[1] == "blob"]
    check = subprocess.run(["git", "cat-file", "--batch-check"], cwd=repo, text=True, capture_output=True,
                           input="".join(f"{oid}\n" for oid, _ in blobs)).stdout.splitlines()
    return [path for (oid, path), line in zip(blobs, check) if line.endswith(" missing")]


def make_venv(venv: Path, python: str = sys.executable) -> Path:
    """A venv at `venv` (created once) with CPU torch installed; returns its python."""
    py = venv / "bin" / "python"
    if not py.is_file():
        log(f"creating {venv}")
        run([python, "-m", "venv", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    constraints = constraints_file(venv)
    if not _has(py, "torch", TORCH.split("==")[1]):
        run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), TORCH])
    return py


def constraints_file(venv: Path, extra: tuple[str, ...] = ()) -> Path:
    """The venv's pip constraints: the CPU torch, plus `extra` lines (a host's own relaxations)."""
    path = venv / "constraints.txt"
    path.write_text("\n".join((TORCH, *extra)) + "\n")
    return path


def pip_install(py: Path, args: list[str], constraints: Path) -> None:
    run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), *args])


def _has(py: Path, package: str, version: str) -> bool:
    proc = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                          text=True, capture_output=True)
    return proc.returncode == 0 and proc.stdout.strip().split("+")[0] == version


def site_packages(py: Path) -> Path:
    return Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())


def write_record(spec: HostSpec, dest: Path, commits: dict[str, str], env: dict[str, str]) -> Path:
    """`<dest>/host.json`: which commits were built and the variables the end-to-end suite needs (the matrix reads
    it)."""
    path = dest / "host.json"
    path.write_text(json.dumps({"name": spec.name, "label": spec.label, "family": spec.family, "commits": commits,
                                "env": env, "suite": list(spec.suite)}, indent=1) + "\n")
    return path


def read_record(dest: Path) -> dict | None:
    path = dest / "host.json"
    return json.loads(path.read_text()) if path.is_file() else None


def default_dest() -> Path:
    """$DMD2_HOSTS, else `hosts/` beside this repository (never inside it)."""
    return Path(os.environ.get("DMD2_HOSTS") or Path(__file__).resolve().parents[3] / "hosts")
