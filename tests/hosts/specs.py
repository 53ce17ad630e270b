"""The test hosts: every ComfyUI / A1111-family version the end-to-end suites run against, pinned by commit.

A host is built from its git sources (a GitHub URL, or a local mirror of it: see `common.source_url`) into
`<dest>/<name>/` by its family's builder (`comfyui.py`, `webui.py`), never inside this repository.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One git tree of a host: `repo` ("owner/name" on GitHub) at `commit`, checked out at `path` in the host."""

    repo: str
    commit: str
    path: str = ""  # "" is the host's own tree; else e.g. "repositories/k-diffusion"


@dataclass(frozen=True)
class HostSpec:
    name: str  # command-line name and folder under <dest>
    family: str  # "comfyui" or "webui": which builder and which end-to-end suite
    label: str  # what the compatibility table calls it
    sources: tuple[Source, ...]  # the host's own tree first
    suite: tuple[str, ...]  # pytest paths run against it by the matrix
    env: str  # prefix of the variables the suite reads: <env>_PATH, <env>_PYTHON

    @property
    def commit(self) -> str:
        return self.sources[0].commit


_ASSETS = Source("AUTOMATIC1111/stable-diffusion-webui-assets", "6f7db241d2f8ba7457bac5ca9753331f0c266917",
                 "repositories/stable-diffusion-webui-assets")
_GENERATIVE_MODELS = Source("Stability-AI/generative-models", "45c443b316737a4ab6e40413d7794a7f5657c19f",
                            "repositories/generative-models")
_K_DIFFUSION = Source("crowsonkb/k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c", "repositories/k-diffusion")
_BLIP = Source("salesforce/BLIP", "48211a1594f1321b00f14c9f7a5b4813144b2fb9", "repositories/BLIP")
_A1111_REPOS = (_ASSETS, _GENERATIVE_MODELS, _K_DIFFUSION, _BLIP)
#: Also the source of the shared random-weight SD1.5 checkpoint's LDM layout (webui.random_checkpoint). reForge pins
#: joypaul162/Stability-AI-stablediffusion f16630a9 (a copy of this repository that cannot be fetched here); this one
#: is used in its place.
STABLE_DIFFUSION = Source("Stability-AI/stablediffusion", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
                          "repositories/stable-diffusion-stability-ai")

_FORGE = (Source("lllyasviel/stable-diffusion-webui-forge", "dfdcbab6"), _ASSETS,
          Source("lllyasviel/huggingface_guess", "84826248b49bb7ca754c73293299c4d4e23a548d",
                 "repositories/huggingface_guess"), _BLIP)

HOSTS: dict[str, HostSpec] = {spec.name: spec for spec in (
    HostSpec("comfyui-0.3.64", "comfyui", "ComfyUI v0.3.64",
             (Source("Comfy-Org/ComfyUI", "a125cd84"),), ("tests/comfyui", "tests/browser"), "COMFYUI"),
    HostSpec("comfyui-0.33.0", "comfyui", "ComfyUI v0.33.0",
             (Source("yzkee/ComfyUI", "2f35f4a0"),), ("tests/comfyui", "tests/browser"), "COMFYUI"),
    HostSpec("a1111-1.10.1", "webui", "A1111 v1.10.1",
             (Source("mamei16/stable-diffusion-webui", "82a973c0"), STABLE_DIFFUSION, *_A1111_REPOS),
             ("tests/a1111",), "A1111"),
    HostSpec("forge", "webui", "Forge (lllyasviel)", _FORGE, ("tests/forge",), "FORGE"),
    # Neo's branch cannot be fetched as a tree: its sampler modules (copied from the search tool's index into
    # <dest>/forge-neo/neo-files, see tests/forge_neo) run inside the Forge build their backend descends from
    HostSpec("forge-neo", "webui", "Forge Neo (modules only)", _FORGE, ("tests/forge_neo",),
             "FORGE"),
    HostSpec("reforge", "webui", "reForge",
             (Source("Panchovix/stable-diffusion-webui-reForge", "3b56b268"),
              STABLE_DIFFUSION, *_A1111_REPOS),
             ("tests/reforge",), "REFORGE"),
    HostSpec("forge-classic", "webui", "Forge Classic",
             (Source("Haoming02/sd-webui-forge-classic", "1f95d717"), _ASSETS,
              STABLE_DIFFUSION, _GENERATIVE_MODELS),
             ("tests/forge_classic",), "FORGE_CLASSIC"),
)}
