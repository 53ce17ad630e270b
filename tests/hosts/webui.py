"""Build an A1111-family test host (A1111, Forge, reForge, Forge Classic) at its pinned commits, ready to run headless
on this CPU machine: `build(spec, dest, mirrors)`.

What each needs beyond its own tree (DESIGN.md sections 4 and 7), done here, idempotently:
- the repositories its launch_utils.py clones, at the commits it pins (specs.py), into `repositories/`;
- a venv with CPU torch and the host's pinned requirements, relaxed only where a pin cannot install here
  (`Recipe.replace`: setuptools for torch 2.13, a wheel URL that is not on PyPI), plus `Recipe.extra`;
- `sitecustomize.py` in the venv: PyPI's torchvision (a CUDA build) next to CPU torch cannot load its operators and
  fails at import; the operator schemas are declared first so it imports (its ops are never called here);
- an offline Hugging Face cache with openai/clip-vit-large-patch14's tokenizer and config (hosts that load the SD1.5
  tokenizer from the hub), derived from the BPE file open_clip ships;
- a random-weight SD1.5 checkpoint in LDM layout, built once for all hosts in `<dest>/../_shared`.

A local mirror is used in place (git alternates) and never fetched from: mirrors made by the search tool's fetch lack
some objects (of other commits, and a few image blobs of pinned ones); such a tree is written from the blobs it has,
and the missing paths are logged (none is code).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import common
from .specs import STABLE_DIFFUSION, HostSpec, Source

HERE = Path(__file__).resolve().parent
#: A1111's pin (69.5.1) cannot build with torch 2.13 (needs >= 77); pytorch_lightning 1.9.4 needs pkg_resources (< 81).
#: Every host venv gets it, pinned in its requirements or not (Forge Classic lists none and ends up with 81+).
SETUPTOOLS = "setuptools>=77.0.3,<81"


@dataclass(frozen=True)
class Recipe:
    """How one host's venv is made from its own requirements file."""

    requirements: str  # the host's pinned requirements file
    replace: tuple[tuple[str, str], ...] = ()  # (regex on a requirement line, its replacement): pins that can't install
    extra: tuple[str, ...] = ()  # packages its launch would install besides the file
    hf_cache: bool = True  # loads openai/clip-vit-large-patch14's tokenizer through the HF hub (offline cache)
    built_on: str | None = None  # reuses that host's build (tree and venv) instead of making its own
    settings: tuple[tuple[str, object], ...] = ()  # web UI settings the host needs here, put into its config.json


_COMMON_REPLACE = (("^setuptools==.*", SETUPTOOLS), ("^torch$", ""))
RECIPES = {
    # launch_utils installs `clip` (openai/CLIP at a commit, a GitHub zip): clip-anytorch is that code on PyPI
    "a1111-1.10.1": Recipe("requirements_versions.txt", _COMMON_REPLACE, ("clip-anytorch",)),
    "forge": Recipe("requirements_versions.txt", _COMMON_REPLACE, ("clip-anytorch",), hf_cache=False),
    # reForge pins pydantic as a GitHub release wheel ("pydantic-fixreforge", 1.10.15 repacked): PyPI's 1.10.15
    "reforge": Recipe("requirements_versions.txt", (*_COMMON_REPLACE, (
        r"^https://github\.com/Panchovix/pydantic-fixreforge/.*", "pydantic==1.10.15")), ("clip-anytorch",),
        hf_cache=False,
        # it ships no SD1.5 VAE-approx model, and its live previews would download one at every txt2img
        settings=(("live_previews_enable", False),)),
    "forge-classic": Recipe("requirements.txt", _COMMON_REPLACE, ("clip-anytorch",)),
    "forge-neo": Recipe("requirements_versions.txt", built_on="forge"),
}
#: What tests/forge_neo needs of Neo (the neo branch of Haoming02/sd-webui-forge-classic), in <dest>/neo-files.
NEO_MODULES = ("sd_samplers.py", "sd_schedulers.py", "sd_samplers_kdiffusion.py", "sd_samplers_cfg_denoiser.py")


def shared_dir(dest: Path) -> Path:
    """What all hosts share (checkpoint, HF cache), beside the hosts: `<dest>/../_shared`."""
    return dest.parent / "_shared"


# --- trees ----------------------------------------------------------------------------------------------------------

def _mirror(repo: str, mirrors: Path | None) -> Path | None:
    url = common.source_url(repo, mirrors)
    return None if url.startswith("https://") else Path(url)


def _missing_blobs(git_dir: Path, commit: str) -> list[str]:
    """Paths of the commit's files whose blobs the (mirror) git directory lacks."""
    listing = common.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "-z", commit]).split("\0")
    entries = [line.split("\t", 1) for line in listing if line]
    batch = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "--batch-check"], text=True,
                           input="".join(meta.split()[2] + "\n" for meta, _ in entries), capture_output=True).stdout
    missing = {line.split()[0] for line in batch.splitlines() if line.endswith(" missing")}
    return [path for meta, path in entries if meta.split()[2] in missing]


def _from_mirror(git_dir: Path, commit: str, dest: Path) -> str:
    """`dest` as a git work tree at `commit` whose objects are the mirror's (git alternates: nothing is copied).

    A mirror may lack objects of other commits, so nothing is fetched from it; and if it lacks blobs of this one,
    every file it has is written and the missing paths are logged.
    """
    full = common.run(["git", f"--git-dir={git_dir}", "rev-parse", commit + "^{commit}"]).strip()
    if (dest / ".git").exists() and common.run(["git", "rev-parse", "HEAD"], cwd=dest).strip() == full:
        return full
    dest.mkdir(parents=True, exist_ok=True)
    common.run(["git", "init", "-q"], cwd=dest)
    (dest / ".git" / "objects" / "info" / "alternates").write_text(str(Path(git_dir).resolve() / "objects") + "\n")
    missing = _missing_blobs(git_dir, full)
    if not missing:
        common.log(f"checking out {git_dir}@{full[:10]} into {dest}")
        common.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", "--force", full], cwd=dest)
        return full
    common.log(f"exporting {git_dir}@{full[:10]} into {dest}; blobs missing in the mirror: {', '.join(missing)}")
    common.run(["git", "read-tree", full], cwd=dest)
    skip = set(missing)
    listing = common.run(["git", "ls-tree", "-r", "-z", full], cwd=dest).split("\0")
    for line in filter(None, listing):
        meta, path = line.split("\t", 1)
        mode, kind, blob = meta.split()
        if kind != "blob" or path in skip:
            continue
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = subprocess.run(["git", "cat-file", "blob", blob], cwd=dest, capture_output=True, check=True).stdout
        if mode == "120000":
            target.unlink(missing_ok=True)
            target.symlink_to(data.decode())
        else:
            target.write_bytes(data)
            target.chmod(0o755 if mode == "100755" else 0o644)
    (dest / ".git" / "HEAD").write_text(full + "\n")
    return full


def tree(source: Source, dest: Path, mirrors: Path | None) -> str:
    """`source` at its commit in `dest`: from a local mirror if there is one, else cloned from GitHub."""
    mirror = _mirror(source.repo, mirrors)
    if mirror is not None:
        return _from_mirror(mirror, source.commit, dest)
    return common.checkout(source, dest, mirrors)


# --- venv -----------------------------------------------------------------------------------------------------------

def requirement_lines(text: str, recipe: Recipe) -> list[str]:
    """The host's requirements file as pip can install it here: each `recipe.replace` applied, comments dropped."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        for pattern, replacement in recipe.replace:
            if re.match(pattern, line):
                line = replacement
        if line:
            out.append(line)
    if not any(line.startswith("setuptools") for line in out):  # torch's needs, pkg_resources for pytorch_lightning
        out.append(SETUPTOOLS)
    return out + list(recipe.extra)


def venv(root: Path, venv_dir: Path, recipe: Recipe) -> Path:
    """The host's venv: CPU torch, its requirements (skipped when the installed list is the same), sitecustomize."""
    py = common.make_venv(venv_dir, python="python3.11")
    lines = requirement_lines((root / recipe.requirements).read_text(encoding="utf-8"), recipe)
    stamp = venv_dir / "dmd2-requirements.txt"
    if not stamp.is_file() or stamp.read_text() != "\n".join(lines) + "\n":
        common.log(f"installing {len(lines)} requirements into {venv_dir} (minutes on first build)")
        req = venv_dir / "requirements-host.txt"
        req.write_text("\n".join(lines) + "\n")
        common.pip_install(py, ["-r", str(req)], common.constraints_file(venv_dir))
        stamp.write_text("\n".join(lines) + "\n")
    site = common.site_packages(py)
    (site / "sitecustomize.py").write_text((HERE / "torchvision_cpu.py").read_text())
    common.run([str(py), "-c", "import torch, torchvision; assert not torch.version.cuda"])
    return py


# --- offline HF cache and the random checkpoint (shared by every host) -----------------------------------------------

def hf_cache(py: Path, shared: Path) -> Path:
    """`<shared>/hf_cache` with openai/clip-vit-large-patch14's tokenizer and config, made by the host's Python."""
    cache = shared / "hf_cache"
    done = cache / "dmd2-clip-l-tokenizer.done"
    if not done.is_file():
        common.log(f"writing the offline CLIP-L tokenizer cache into {cache}")
        env = dict(os.environ, HF_HOME=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        common.run([str(py), str(HERE / "clip_tokenizer_cache.py"), str(cache)], env=env)
        done.write_text("ok\n")
    return cache


def random_checkpoint(py: Path, shared: Path, mirrors: Path | None) -> Path:
    """`<shared>/sd15_random.safetensors`: the SD1.5 architecture (LDM layout) with random weights, fp16."""
    path = shared / "sd15_random.safetensors"
    if not path.is_file():
        ldm = shared / "stablediffusion"
        tree(STABLE_DIFFUSION, ldm, mirrors)
        common.log(f"building {path} (random weights, ~2.1 GB)")
        common.run([str(py), str(HERE / "random_sd15.py"), str(ldm), str(path)])
    return path


# --- the host -------------------------------------------------------------------------------------------------------

def build_neo(spec: HostSpec, dest: Path, mirrors: Path | None) -> None:
    """Forge Neo: the Forge build its backend descends from, plus Neo's sampler modules in `<dest>/neo-files`.

    Those cannot be fetched as a tree here; they are read from the search tool's code index (read_file on
    Haoming02/sd-webui-forge-classic, modules/<file> of the neo branch) and saved there by hand, with a SOURCES.md
    naming each file's commit.
    """
    from .specs import HOSTS
    base = HOSTS[RECIPES[spec.name].built_on]
    build(base, dest.parent / base.name, mirrors)
    files = dest / "neo-files"
    missing = [m for m in NEO_MODULES if not (files / "modules" / m).is_file()]
    if missing:
        raise SystemExit(f"[hosts] {spec.name}: put Forge Neo's modules/{', modules/'.join(missing)} (neo branch of "
                         f"Haoming02/sd-webui-forge-classic) into {files}/modules and build again")
    env = dict(common.read_record(dest.parent / base.name)["env"], FORGE_NEO_FILES=str(files))
    common.write_record(spec, dest, {"": spec.commit, "neo-files": "see neo-files/SOURCES.md"}, env)


def build(spec: HostSpec, dest: Path, mirrors: Path | None) -> None:
    """Build host `spec` into `dest` (webui/, venv/, host.json); safe to run again."""
    recipe = RECIPES[spec.name]
    if recipe.built_on:
        return build_neo(spec, dest, mirrors)
    root = dest / "webui"
    commits = {}
    for source in spec.sources:
        commits[source.path] = tree(source, root / source.path if source.path else root, mirrors)
    py = venv(root, dest / "venv", recipe)
    if recipe.settings:
        config = root / "config.json"
        values = json.loads(config.read_text()) if config.is_file() else {}
        config.write_text(json.dumps({**values, **dict(recipe.settings)}, indent=4))
    shared = shared_dir(dest)
    shared.mkdir(parents=True, exist_ok=True)
    env = {f"{spec.env}_PATH": str(root), f"{spec.env}_PYTHON": str(py),
           f"{spec.env}_CKPT": str(random_checkpoint(py, shared, mirrors))}
    if recipe.hf_cache:
        env["HF_HOME"] = str(hf_cache(py, shared))
    record = common.write_record(spec, dest, commits, env)
    common.log(f"{spec.name} built: {record}\n" + json.dumps(env, indent=1))
