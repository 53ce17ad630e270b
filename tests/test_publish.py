"""Comfy Registry readiness, checked with comfy-cli's own code (PyPI: comfy-cli, in requirements-dev.txt).

- `comfy node validate` (what `comfy node publish` runs first: pyproject parsing and ruff S102/S307/E702) is clean.
- pyproject.toml says what the registry and the Manager show: id, display name, icon, ComfyUI floor, accelerators.
- The zip `comfy node publish` uploads (git-tracked files minus .comfyignore, built by comfy-cli's zip_files) holds
  exactly the ComfyUI pack: its Python files are the modules ComfyUI imports from __init__.py, plus the data the
  nodes and the frontend read, and nothing else (no tests, trainer, A1111 glue, install.py or weight files).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Files besides Python modules that a ComfyUI user needs: what ComfyUI, the frontend and the nodes read at run
#: time, the licence and the project description.
DATA_FILES = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "requirements.txt", "models.json",
              "models.schema.json", "docs/comfyui.md"}
DATA_FOLDERS = ("web/", "locales/", "example_workflows/")  # every tracked file in them ships
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")


def _comfy_cli():
    try:
        from comfy_cli import file_utils
        from comfy_cli.registry import config_parser
    except ImportError:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli; requirements-dev.txt has it)")
    return file_utils, config_parser


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the registry zip is built from git-tracked files: this is not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_from_entry_point(files: list[str]) -> set[str]:
    """The .py files ComfyUI loads with the pack: __init__.py and, transitively, every module of the pack that a
    loaded module imports (absolute or relative, at any depth of the file: lazy imports count)."""
    modules = {_module_name(f): f for f in files if f.endswith(".py")}
    seen, todo = set(), [""]  # "" is the pack itself: the root __init__.py
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = modules[name]
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = [p for p in package.split(".") if p]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                todo += [".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in modules]
    return {modules[name] for name in seen}


def build_registry_zip(folder: Path) -> Path:
    """The zip `comfy node publish` would upload, built from this checkout by comfy-cli's own zip_files."""
    file_utils, config_parser = _comfy_cli()
    _tracked_files()
    config = config_parser.extract_node_configuration(str(ROOT / "pyproject.toml"))
    path = folder / "node.zip"
    cwd = os.getcwd()
    os.chdir(ROOT)  # zip_files works on the current directory, as `comfy node publish` does
    try:
        file_utils.zip_files(str(path), includes=config.tool_comfy.includes)
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture(scope="module")
def registry_zip(tmp_path_factory) -> set[str]:
    """The names in the registry zip."""
    with zipfile.ZipFile(build_registry_zip(tmp_path_factory.mktemp("registry"))) as z:
        return set(z.namelist())


def test_registry_zip_python_is_exactly_what_comfyui_imports(registry_zip):
    shipped = {n for n in registry_zip if n.endswith(".py")}
    needed = imported_from_entry_point(_tracked_files())
    assert not needed - shipped, f"imported by the pack but left out (fix .comfyignore): {sorted(needed - shipped)}"
    assert not shipped - needed, f"shipped but never imported by ComfyUI (add to .comfyignore): " \
                                 f"{sorted(shipped - needed)}"


def test_registry_zip_data_files(registry_zip):
    data = {n for n in registry_zip if not n.endswith(".py")}
    expected = DATA_FILES | {f for f in _tracked_files() if f.startswith(DATA_FOLDERS)}
    assert data == expected, f"unexpected: {sorted(data - expected)}; missing: {sorted(expected - data)}"
    assert {"LICENSE", "requirements.txt", "models.json", "web/dmd2_live.js", "locales/zh/nodeDefs.json"} <= data
    assert not [n for n in registry_zip if n.endswith(WEIGHT_SUFFIXES)], "no weight files in the node zip"
    assert "install.py" not in registry_zip  # runs pip; the Manager installs requirements.txt itself


def _imports(path: Path) -> set[str]:
    """Absolute modules a file imports (relative imports stay inside the pack and are left out)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _calls(path: Path) -> set[str]:
    """Names of called functions, dotted as written (`os.system`, `eval`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            names.add(ast.unparse(node.func))
    return names


#: What the 2026 registry scanner flags, as code: running programs (pip through subprocess) and executing strings.
RUNS_PROGRAMS = {"subprocess", "os.system", "os.popen", "os.execv", "os.spawnv", "pty", "pip"}
RUNS_STRINGS = {"exec", "eval", "compile", "__import__"}
#: Outbound network clients, and libraries that fetch from the Hub on their own (diffusers' single-file loading).
NETWORK = ("urllib.request", "http.client", "requests", "httpx", "urllib3", "socket", "huggingface_hub", "diffusers")
NETWORK_USERS = {
    "sampler/models/download.py",  # verified downloads of catalog files: what the loaders use
}


def test_shipped_code_runs_no_programs_and_no_strings(registry_zip):
    for name in sorted(n for n in registry_zip if n.endswith(".py")):
        imports, calls = _imports(ROOT / name), _calls(ROOT / name)
        assert not {m for m in imports if m.split(".")[0] in RUNS_PROGRAMS or m in RUNS_PROGRAMS}, name
        assert not (calls & (RUNS_PROGRAMS | RUNS_STRINGS)), f"{name}: {sorted(calls & (RUNS_PROGRAMS | RUNS_STRINGS))}"


def test_shipped_code_uses_the_network_only_to_download_catalog_files(registry_zip):
    users = {n for n in registry_zip if n.endswith(".py")
             and any(m == net or m.startswith(net + ".") for m in _imports(ROOT / n) for net in NETWORK)}
    assert users == NETWORK_USERS


def test_comfy_node_validate_is_clean(tmp_path):
    """`comfy node validate` exits 0 even with findings; clean means no warning and its success line."""
    _comfy_cli()
    comfy = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    env = {**os.environ, "HOME": str(tmp_path), "DO_NOT_TRACK": "1", "COMFY_NO_UPDATE_CHECK": "1",
           "COLUMNS": "200"}  # HOME: comfy-cli writes its config there; no telemetry, no PyPI update check
    run = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "All validation checks passed" in out and "warning" not in out.lower(), out


def test_registry_metadata():
    """What the registry and the Manager show, as comfy-cli reads it from pyproject.toml."""
    _, config_parser = _comfy_cli()
    config = config_parser.extract_node_configuration(str(ROOT / "pyproject.toml"))
    project, comfy = config.project, config.tool_comfy
    assert "comfyui" not in project.name.lower(), "the registry advises against 'ComfyUI' in the node id"
    assert comfy.publisher_id and comfy.display_name and "comfyui" not in comfy.display_name.lower()
    assert project.version and project.description and project.license.text == "GPL-3.0-or-later"
    assert project.supported_comfyui_version.startswith(">=")  # comfy-cli blanks a malformed one
    assert project.supported_accelerators and project.supported_os  # blanked too when a classifier is invalid
    repository = project.urls.repository.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert comfy.icon.startswith(prefix), comfy.icon
    from PIL import Image

    with Image.open(ROOT / comfy.icon.removeprefix(prefix)) as icon:  # the icon is a file in this repository
        assert icon.format == "PNG" and icon.width <= 800 and icon.height <= 400


def test_example_workflows_name_this_pack():
    """Node properties.cnr_id in the example workflows is this pack's registry id."""
    sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
    import examples

    _, config_parser = _comfy_cli()
    assert examples.PACK_ID == config_parser.extract_node_configuration(str(ROOT / "pyproject.toml")).project.name


def test_the_import_reader_follows_the_pack_and_only_the_pack():
    found = imported_from_entry_point(_tracked_files())
    assert {"__init__.py", "nodes/__init__.py", "nodes/loaders.py", "sampler/plans.py", "sampler/models/taesd.py"} <= found
    assert not {"install.py", "distill/__init__.py", "extension/__init__.py", "tests/test_publish.py"} & found


def test_publish_on_tag_workflow(tmp_path):
    """The GitHub workflow publishes with Comfy-Org's action after the test suite, and only from a tag that names
    pyproject.toml's version (its check step is run here as written)."""
    yaml = pytest.importorskip("yaml")
    _, config_parser = _comfy_cli()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "publish.yml").read_text())
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key `on` as True
    tests, publish = workflow["jobs"]["tests"], workflow["jobs"]["publish"]
    assert {"run": "bash .ci/run"} in tests["steps"] and publish["needs"] == "tests"
    action = publish["steps"][-1]
    assert action["uses"].startswith("Comfy-Org/publish-node-action@")
    assert action["with"] == {"personal_access_token": "${{ secrets.REGISTRY_ACCESS_TOKEN }}"}
    check = next(s["run"] for s in publish["steps"] if s.get("name", "").startswith("The tag names the version"))
    version = config_parser.extract_node_configuration(str(ROOT / "pyproject.toml")).project.version
    for tag, ok in ((f"v{version}", True), ("v999.0.0", False)):
        run = subprocess.run(["bash", "-c", check], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "GITHUB_REF_NAME": tag, "PATH": f"{Path(sys.executable).parent}:"
                                  + os.environ.get("PATH", "")})
        assert (run.returncode == 0) == ok, (tag, run.stdout, run.stderr)


#: tags.json of AUTOMATIC1111/stable-diffusion-webui-extensions (commit 956826e), minus `installed` (webui-internal).
A1111_TAGS = {"script", "localization", "tab", "dropdown", "ads", "training", "models", "UI related", "prompting",
              "editing", "manipulations", "online", "animation", "query", "science", "extras"}


def test_index_entries_are_ready_to_submit():
    """docs/index/: the A1111 extension index entry (its extension_template.json keys and tags) and the
    ComfyUI-Manager custom-node-list.json entry (the fields and URL form its json-checker.py requires)."""
    import json
    import re

    _, config_parser = _comfy_cli()
    config = config_parser.extract_node_configuration(str(ROOT / "pyproject.toml"))
    repository, title = config.project.urls.repository, config.tool_comfy.display_name
    a1111 = json.loads((ROOT / "docs" / "index" / "a1111-extension.json").read_text())
    assert set(a1111) == {"name", "url", "description", "tags"} and set(a1111["tags"]) <= A1111_TAGS
    assert a1111["url"] == repository + ".git" and a1111["name"] == title and a1111["description"]
    manager = json.loads((ROOT / "docs" / "index" / "comfyui-manager.json").read_text())
    assert {"author", "title", "reference", "files", "install_type", "description"} <= set(manager)
    assert re.fullmatch(r"https://github\.com/[^/]+/[^/]+", manager["reference"])  # no .git
    assert manager["files"] == [repository] == [manager["reference"]] and manager["install_type"] == "git-clone"
    assert manager["id"] == config.project.name and manager["title"] == title
    assert all(re.match(manager["nodename_pattern"], node) for node in json.loads(
        (ROOT / "locales" / "en" / "nodeDefs.json").read_text()))
