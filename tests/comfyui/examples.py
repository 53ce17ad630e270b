"""Builds the pack's example workflows (example_workflows/*.json, in the UI format ComfyUI's frontend saves), a
thumbnail of each for the template browser (example_workflows/*.jpg) and a picture of each graph for the README
(docs/images/*.png). Run `python tests/comfyui/examples.py` after changing a node's inputs; the suite checks the
committed files (test_nodes_examples.py without ComfyUI, test_comfyui_e2e.py against /object_info, tests/browser
for the frontend's missing-models list).

Loader nodes carry `properties.models` ({name, url, hash, hash_type, directory} from models.json) for every catalog
file their widgets name, so the frontend lists a missing SDXL or DMD2 file with its download link; `properties.cnr_id`
names the pack of each node (our registry id, or comfy-core), so a frontend without the pack can offer to install it.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from sampler.models.catalog import load_catalog  # noqa: E402

WORKFLOWS = REPO / "example_workflows"
IMAGES = REPO / "docs" / "images"
#: The Comfy Registry id of this pack ([project] name in pyproject.toml; tests/test_publish.py checks they agree).
PACK_ID = "dmd2-sampler"
CATALOG = load_catalog()
SDXL = CATALOG.get("sdxl-base-1.0").filename
DMD2_LORA = CATALOG.get("dmd2-sdxl-4step-lora-fp16").filename
DMD2_UNET = CATALOG.get("dmd2-sdxl-4step-unet-fp16").filename
PROMPT = "a photo of a red fox in fresh snow, golden hour, detailed fur"

#: node type -> (input sockets [(name, type)], output sockets [(name, type)]); widgets come as values.
SOCKETS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "SamplerCustom": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                      [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "LatentUpscaleBy": ([("samples", "LATENT")], [("LATENT", "LATENT")]),
    "DMD2UNetLoader": ([], [("MODEL", "MODEL")]),
    "DMD2LoraLoader": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "DMD2Scheduler": ([("model", "MODEL")], [("SIGMAS", "SIGMAS")]),
    "DMD2Sampler": ([], [("SAMPLER", "SAMPLER")]),
    "DMD2KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("latent_image", "LATENT"),
                      ("negative", "CONDITIONING")], [("LATENT", "LATENT")]),
}
TITLES = {"DMD2UNetLoader": "DMD2 Load UNet", "DMD2LoraLoader": "DMD2 LoRA", "DMD2Scheduler": "DMD2 Scheduler",
          "DMD2Sampler": "DMD2 Sampler", "DMD2KSampler": "DMD2 KSampler"}


def model_files(widgets: list) -> list[dict]:
    """`properties.models` of a node: the catalog files its widget values name (the released .safetensors names:
    the frontend offers downloads of .safetensors files from huggingface.co only)."""
    return [{"name": e.filename, "url": e.url, "hash": e.sha256, "hash_type": "SHA256", "directory": e.comfyui_folder}
            for e in CATALOG if e.filename in widgets]


class Workflow:
    def __init__(self, title: str):
        self.title, self.nodes, self.links = title, [], []

    def node(self, type_: str, pos: tuple[int, int], widgets: list, **inputs) -> int:
        """Add a node; `inputs` maps an input socket to (node id, output slot)."""
        node_id = len(self.nodes) + 1
        ins, outs = SOCKETS[type_]
        node = {"id": node_id, "type": type_, "pos": list(pos), "size": [300, 60 + 24 * (len(ins) + len(widgets))],
                "flags": {}, "order": 0, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in ins],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": type_, "cnr_id": PACK_ID if type_ in TITLES else "comfy-core"},
                "widgets_values": widgets}
        if model_files(widgets):
            node["properties"]["models"] = model_files(widgets)
        if type_ in TITLES:
            node["title"] = TITLES[type_]
        self.nodes.append(node)
        for name, (src, slot) in inputs.items():
            link_id = len(self.links) + 1
            target = next(i for i, s in enumerate(node["inputs"]) if s["name"] == name)
            kind = node["inputs"][target]["type"]
            node["inputs"][target]["link"] = link_id
            self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
            self.links.append([link_id, src, slot, node_id, target, kind])
        return node_id

    def to_json(self) -> dict:
        order, done = {}, set()
        while len(done) < len(self.nodes):  # topological order, as the frontend saves it
            for n in self.nodes:
                deps = {l[1] for l in self.links if l[3] == n["id"]}
                if n["id"] not in done and deps <= done:
                    order[n["id"]] = len(done)
                    done.add(n["id"])
        for n in self.nodes:
            n["order"] = order[n["id"]]
            n["inputs"] = [s for s in n["inputs"] if s["link"] is not None or s["name"] != "negative"]
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, PACK_ID + "/" + self.title)), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"dmd2": {"title": self.title}}, "version": 0.4}


def _text(w: Workflow, ckpt: int, x: int, y: int) -> int:
    return w.node("CLIPTextEncode", (x, y), [PROMPT], clip=(ckpt, 1))


def _finish(w: Workflow, latent: int, ckpt: int, x: int, prefix: str) -> None:
    decode = w.node("VAEDecode", (x, 80), [], samples=(latent, 0), vae=(ckpt, 2))
    w.node("SaveImage", (x, 220), [prefix], images=(decode, 0))


def _dmd2_ksampler_txt2img(w: Workflow, model: int, ckpt: int, prefix: str) -> None:
    """Prompt, 1024^2 empty latent, DMD2 KSampler at 4 steps on `model`, decode and save."""
    pos = _text(w, ckpt, 400, 80)
    empty = w.node("EmptyLatentImage", (400, 300), [1024, 1024, 1])
    sample = w.node("DMD2KSampler", (760, 80), [0, "randomize", 4, 1.0, 1.0], model=(model, 0), positive=(pos, 0),
                    latent_image=(empty, 0))
    _finish(w, sample, ckpt, 1120, prefix)


def lora_4step() -> Workflow:
    w = Workflow("SDXL 4-step: DMD2 LoRA on SDXL base")
    ckpt = w.node("CheckpointLoaderSimple", (40, 80), [SDXL])
    lora = w.node("DMD2LoraLoader", (40, 260), [DMD2_LORA, 1.0], model=(ckpt, 0))
    _dmd2_ksampler_txt2img(w, lora, ckpt, "dmd2_lora_4step")
    return w


def unet_4step() -> Workflow:
    w = Workflow("SDXL 4-step: DMD2 UNet, CLIP and VAE from SDXL base")
    unet = w.node("DMD2UNetLoader", (40, 80), [DMD2_UNET, "default", "auto"])
    ckpt = w.node("CheckpointLoaderSimple", (40, 260), [SDXL])
    _dmd2_ksampler_txt2img(w, unet, ckpt, "dmd2_unet_4step")
    return w


def unet_1step() -> Workflow:
    w = Workflow("SDXL 1-step (t=399): DMD2 UNet with SamplerCustom, DMD2 Scheduler and DMD2 Sampler")
    # Released only as a pickle (.bin), which the frontend does not offer to download: the node fetches and converts it.
    unet = w.node("DMD2UNetLoader", (40, 80), ["catalog: dmd2-sdxl-1step-unet-fp16", "default", "auto"])
    ckpt = w.node("CheckpointLoaderSimple", (40, 260), [SDXL])
    pos = _text(w, ckpt, 400, 80)
    neg = w.node("CLIPTextEncode", (400, 300), [""], clip=(ckpt, 1))
    sigmas = w.node("DMD2Scheduler", (400, 480), [1, 1.0], model=(unet, 0))
    sampler = w.node("DMD2Sampler", (40, 440), [])
    empty = w.node("EmptyLatentImage", (40, 560), [1024, 1024, 1])
    sample = w.node("SamplerCustom", (760, 80), [True, 0, "randomize", 1.0], model=(unet, 0), positive=(pos, 0),
                    negative=(neg, 0), sampler=(sampler, 0), sigmas=(sigmas, 0), latent_image=(empty, 0))
    _finish(w, sample, ckpt, 1120, "dmd2_unet_1step")
    return w


def upscale_2pass() -> Workflow:
    w = Workflow("SDXL 2-pass upscale: 4 steps at 1024, then 1.5x and 2 steps at denoise 0.5 (timesteps 499, 249)")
    unet = w.node("DMD2UNetLoader", (40, 80), [DMD2_UNET, "default", "auto"])
    ckpt = w.node("CheckpointLoaderSimple", (40, 260), [SDXL])
    pos = _text(w, ckpt, 400, 80)
    empty = w.node("EmptyLatentImage", (400, 300), [1024, 1024, 1])
    first = w.node("DMD2KSampler", (760, 80), [0, "randomize", 4, 1.0, 1.0], model=(unet, 0), positive=(pos, 0),
                   latent_image=(empty, 0))
    up = w.node("LatentUpscaleBy", (760, 380), ["nearest-exact", 1.5], samples=(first, 0))
    second = w.node("DMD2KSampler", (1120, 80), [1, "randomize", 2, 0.5, 1.0], model=(unet, 0), positive=(pos, 0),
                    latent_image=(up, 0))
    _finish(w, second, ckpt, 1480, "dmd2_upscale_2pass")
    return w


def stock_ksampler() -> Workflow:
    w = Workflow("Stock KSampler with sampler dmd2 and scheduler dmd2 (cfg 1)")
    ckpt = w.node("CheckpointLoaderSimple", (40, 80), [SDXL])
    lora = w.node("DMD2LoraLoader", (40, 260), [DMD2_LORA, 1.0], model=(ckpt, 0))
    pos = _text(w, ckpt, 400, 80)
    neg = w.node("CLIPTextEncode", (400, 300), [""], clip=(ckpt, 1))
    empty = w.node("EmptyLatentImage", (40, 440), [1024, 1024, 1])
    sample = w.node("KSampler", (760, 80), [0, "randomize", 4, 1.0, "dmd2", "dmd2", 1.0], model=(lora, 0),
                    positive=(pos, 0), negative=(neg, 0), latent_image=(empty, 0))
    _finish(w, sample, ckpt, 1120, "dmd2_stock_ksampler")
    return w


EXAMPLES = {"dmd2_sdxl_4step_lora": lora_4step, "dmd2_sdxl_4step_unet": unet_4step,
            "dmd2_sdxl_1step_unet": unet_1step, "dmd2_sdxl_2pass_upscale": upscale_2pass,
            "dmd2_stock_ksampler": stock_ksampler}
COLORS = {"MODEL": (180, 160, 255), "CLIP": (255, 210, 80), "VAE": (255, 110, 110), "CONDITIONING": (255, 170, 60),
          "LATENT": (255, 130, 200), "IMAGE": (100, 180, 255), "SAMPLER": (120, 230, 160), "SIGMAS": (120, 220, 220)}


BACKGROUND = (32, 32, 34)
THUMBNAIL = 512  # square: the template browser shows square cards


def _fonts(title_size: int, size: int):
    from PIL import ImageFont

    font_dir = Path("/usr/share/fonts/truetype/dejavu")
    try:
        return (ImageFont.truetype(str(font_dir / "DejaVuSans-Bold.ttf"), title_size),
                ImageFont.truetype(str(font_dir / "DejaVuSans.ttf"), size))
    except OSError:
        return ImageFont.load_default(), ImageFont.load_default()


def render(workflow: dict):
    """A picture of the graph in ComfyUI's dark style (a PIL image): nodes, sockets, links and widget values."""
    from PIL import Image, ImageDraw

    title_font, font = _fonts(15, 13)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    heights = {i: 34 + 22 * max(len(n["inputs"]), len(n["outputs"])) + 20 * len(n["widgets_values"]) + 8
               for i, n in nodes.items()}
    width = max(n["pos"][0] for n in nodes.values()) + 340
    height = max(n["pos"][1] + heights[i] for i, n in nodes.items()) + 60
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((20, 16), workflow["extra"]["dmd2"]["title"], fill=(230, 230, 230), font=title_font)

    def socket(node, slot, output):
        x = node["pos"][0] + (300 if output else 0)
        return x, node["pos"][1] + 46 + 22 * slot

    for _, src, s_slot, dst, d_slot, kind in workflow["links"]:
        (x0, y0), (x1, y1) = socket(nodes[src], s_slot, True), socket(nodes[dst], d_slot, False)
        mid = (x0 + x1) / 2
        pts = [(x0 + (mid - x0) * t * 2 if t < 0.5 else mid + (x1 - mid) * (t - 0.5) * 2,
                y0 + (y1 - y0) * (3 * t * t - 2 * t * t * t)) for t in [i / 40 for i in range(41)]]
        draw.line(pts, fill=COLORS.get(kind, (200, 200, 200)), width=3)
    for i, n in nodes.items():
        x, y = n["pos"]
        ours = n["type"].startswith("DMD2")
        draw.rounded_rectangle((x, y, x + 300, y + heights[i]), 8, fill=(53, 53, 56),
                               outline=(150, 120, 255) if ours else (80, 80, 84), width=2)
        draw.rounded_rectangle((x, y, x + 300, y + 28), 8, fill=(70, 60, 120) if ours else (66, 66, 70))
        draw.text((x + 10, y + 6), n.get("title", n["type"]), fill=(240, 240, 240), font=title_font)
        for slot, s in enumerate(n["inputs"]):
            sx, sy = socket(n, slot, False)
            draw.ellipse((sx - 5, sy - 5, sx + 5, sy + 5), fill=COLORS.get(s["type"], (200, 200, 200)))
            draw.text((sx + 10, sy - 8), s["name"], fill=(200, 200, 200), font=font)
        for slot, s in enumerate(n["outputs"]):
            sx, sy = socket(n, slot, True)
            draw.ellipse((sx - 5, sy - 5, sx + 5, sy + 5), fill=COLORS.get(s["type"], (200, 200, 200)))
            draw.text((sx - 12 - draw.textlength(s["name"], font=font), sy - 8), s["name"], fill=(200, 200, 200),
                      font=font)
        wy = y + 40 + 22 * max(len(n["inputs"]), len(n["outputs"]))
        for value in n["widgets_values"]:
            text = str(value)
            text = text if len(text) <= 40 else text[:37] + "..."
            draw.rounded_rectangle((x + 8, wy - 2, x + 292, wy + 16), 5, fill=(36, 36, 38))
            draw.text((x + 14, wy), text, fill=(210, 210, 210), font=font)
            wy += 20
    return img


def thumbnail(workflow: dict, graph):
    """The template browser's square card: the workflow's title in large type over the graph picture, scaled."""
    from PIL import Image, ImageDraw

    title_font, _ = _fonts(26, 13)
    card = Image.new("RGB", (THUMBNAIL, THUMBNAIL), BACKGROUND)
    draw = ImageDraw.Draw(card)
    lines = [""]
    for word in workflow["extra"]["dmd2"]["title"].split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=title_font) <= THUMBNAIL - 48:
            lines[-1] = joined
        else:
            lines.append(word)
    y = 24
    for line in lines:
        draw.text((24, y), line, fill=(235, 230, 255), font=title_font)
        y += 34
    room = (THUMBNAIL - 32, THUMBNAIL - y - 24)
    scale = min(room[0] / graph.width, room[1] / graph.height)
    small = graph.resize((round(graph.width * scale), round(graph.height * scale)), Image.LANCZOS)
    card.paste(small, ((THUMBNAIL - small.width) // 2, y + 8 + (room[1] - small.height) // 2))
    return card


def main() -> None:
    WORKFLOWS.mkdir(exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, build in EXAMPLES.items():
        data = build().to_json()
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        graph = render(data)
        graph.quantize(colors=64).save(IMAGES / f"{name}.png", optimize=True)
        thumbnail(data, graph).save(WORKFLOWS / f"{name}.jpg", quality=85, optimize=True)
        print(name, (IMAGES / f"{name}.png").stat().st_size, (WORKFLOWS / f"{name}.jpg").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
