"""DMD2 Live: the `DMD2LiveSession` node and the `/dmd2/live/*` routes behind the live panel (web/dmd2_live.js).

Queueing a workflow with DMD2 Live Session registers its MODEL, CLIP and VAE (references, no copies) as the live
session. The panel then posts {prompt, seed, strength, request_id} to /dmd2/live/frame and gets a JPEG back with the
time of every stage. Frames render on one worker thread (`sampler.live.LatestWins`: the newest request wins, older
ones are dropped or stopped between stages). A frame starts only while ComfyUI's prompt queue is idle, and the
prompt worker waits for a frame in flight before it runs a prompt (`host.install_queue_gate`), so the queue waits at
most one frame and frames never run next to a prompt (no model loads or weight patches from two threads).

Strength is the denoise against the session's anchor: the last frame rendered at strength 1 for the same seed. At 1
every edit is a fresh image from the seed's noise; below 1 the new prompt repaints the anchor that much and the
composition stays. (Not LoRA strength: changing it re-patches every UNet weight, seconds per change on SDXL.)
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import torch

from ..sampler.errors import DMD2Error
from ..sampler.live import FrameTimings, LatestWins, PromptCache, Superseded, check_cancelled, idle_gate, timed
from . import host
from .sampling import node_sigmas, sample_dmd2

log = logging.getLogger("dmd2")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_REQUEST_ID = 2**53  # what a JavaScript number counts exactly
MAX_PROMPT = 4000
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}


class NoSession(Exception):
    """No DMD2 Live Session node has run yet in this server."""


@dataclass(frozen=True)
class FrameRequest:
    prompt: str
    seed: int = 0
    strength: float = 1.0
    request_id: int = 0
    format: str = "jpeg"
    submitted: float = 0.0


def _whole_number(body: dict, name: str, default: int, high: int) -> int:
    """body[name] as an integer in 0..high: a JSON integer, an integral finite number or a decimal string (the
    panel sends numbers; a hand-made request may not). ValueError names the field otherwise."""
    value = body.get(name, default)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ValueError(f"{name} must be a whole number in 0..{high}, got {value!r:.60}")
    return value


def parse_frame_request(body: Any) -> FrameRequest:
    """A FrameRequest from the panel's JSON; ValueError (-> HTTP 400) names the field that is wrong.

    Every field is checked before anything is queued: JSON allows what Python cannot use here (Infinity and NaN
    are numbers to json.loads, a list where a string belongs is unhashable), and those must end as a 400, not as
    an error in the worker."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object {prompt, seed, strength, request_id, format}")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise ValueError(f"prompt must be a string of at most {MAX_PROMPT} characters")
    seed = _whole_number(body, "seed", 0, MAX_SEED)
    request_id = _whole_number(body, "request_id", 0, MAX_REQUEST_ID)
    strength = body.get("strength", 1.0)
    if isinstance(strength, str):
        try:
            strength = float(strength)
        except ValueError:
            pass
    if (not isinstance(strength, (int, float)) or isinstance(strength, bool) or not math.isfinite(strength)
            or not 0.0 < strength <= 1.0):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r:.60}")
    fmt = body.get("format", "jpeg")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r:.60}")
    return FrameRequest(prompt, seed, float(strength), request_id, fmt, time.perf_counter())


class Session:
    """What DMD2 Live Session registered: the graph's MODEL / CLIP / VAE, frame size and step count, the prompt
    cache, the frame decoder (TAESD from models/vae_approx if there, else the VAE) and the anchor latent."""

    def __init__(self, model: Any, clip: Any, vae: Any, width: int, height: int, steps: int):
        self.model, self.clip, self.vae = model, clip, vae
        self.width, self.height, self.steps = width, height, steps
        self.conditioning = PromptCache(lambda text: host.encode_prompt(clip, text))
        self.base = host.model_base(model)
        self.tiny_decoder, self.decoder = None, "vae"
        path = host.tiny_decoder_file(self.base)
        if path is not None:
            from ..sampler.models.taesd import load_tiny_decoder

            device = host.torch_device()
            self.tiny_decoder = load_tiny_decoder(path, device, torch.float16 if device.type == "cuda" else
                                                  torch.float32)
            self.decoder = f"taesd ({path.name})"
        self.anchor: tuple[int, torch.Tensor] | None = None  # (seed, latent) of the last strength-1 frame
        self.frames = 0

    def start(self, seed: int, strength: float) -> tuple[torch.Tensor, float]:
        """(start latent, denoise): the anchor below strength 1 when it has this seed, else an empty latent."""
        if strength < 1.0 and self.anchor is not None and self.anchor[0] == seed:
            return self.anchor[1], strength
        return torch.zeros(1, 4, self.height // 8, self.width // 8), 1.0

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) in [0, 1] on the CPU."""
        if self.tiny_decoder is None:
            return host.vae_decode(self.vae, samples).float().cpu()
        from ..sampler.models.taesd import decode_tiny

        return decode_tiny(self.tiny_decoder, host.latent_for_unet(self.model, samples))[0].permute(1, 2, 0).cpu()

    def describe(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "steps": self.steps, "base": self.base,
                "decoder": self.decoder, "frames": self.frames,
                "prompt_cache": {"hits": self.conditioning.hits, "misses": self.conditioning.misses}}


def encode_image(pixels: torch.Tensor, fmt: str) -> bytes:
    """JPEG (quality 90) or PNG bytes of an (H, W, 3) image in [0, 1]."""
    from PIL import Image

    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
    return out.getvalue()


def render_frame(session: Session, request: FrameRequest, cancelled: Callable[[], bool]) -> tuple[bytes, FrameTimings]:
    """One frame: encode (cached per prompt), UNet (`session.steps` DMD2 steps), decode, image encoding; checks for a
    newer request between stages and after every sampler step."""
    timings, device = FrameTimings(), host.torch_device()
    timings.stages["wait"] = time.perf_counter() - request.submitted if request.submitted else 0.0
    with torch.inference_mode():
        with timed(timings, "encode", device):
            positive = session.conditioning(request.prompt)
        check_cancelled(cancelled)
        with timed(timings, "unet", device):
            latent, denoise = session.start(request.seed, request.strength)
            sigmas = node_sigmas(session.model, session.steps, denoise)
            samples = host.sample_frame(session.model, request.seed, sigmas, host.ksampler(sample_dmd2), positive,
                                        latent, callback=lambda *_: check_cancelled(cancelled))
        if denoise >= 1.0:
            session.anchor = (request.seed, samples)
        check_cancelled(cancelled)
        with timed(timings, "decode", device):
            pixels = session.decode(samples)
        with timed(timings, "image", torch.device("cpu")):
            data = encode_image(pixels, request.format)
    session.frames += 1
    return data, timings


class Live:
    """The server's live state: the registered session and the frame worker (one per server process)."""

    def __init__(self, busy: Callable[[], bool] | None = None):
        self.session: Session | None = None
        self.lock = threading.Lock()  # held for the duration of one frame; the prompt worker passes through it
        self.busy = busy or (lambda: False)
        self.worker = LatestWins(self._render, lambda cancelled: idle_gate(self.lock, self.busy, cancelled))
        self.waiting = False

    def _render(self, request: FrameRequest, cancelled: Callable[[], bool]) -> tuple[bytes, FrameTimings]:
        if self.session is None:
            raise NoSession("queue a workflow with a 'DMD2 Live Session' node first: it tells the panel which "
                            "model, CLIP and VAE to use")
        return render_frame(self.session, request, cancelled)

    def submit(self, request: FrameRequest):
        return self.worker.submit(request)


LIVE = Live()


class DMD2LiveSession:
    DESCRIPTION = ("Makes this MODEL, CLIP and VAE the live session of the DMD2 Live panel (sidebar): queue the "
                   "workflow once, then type in the panel and the image follows. Holds references, no copies.")
    CATEGORY = "sampling/DMD2"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "register"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"min": 64, "max": 2048, "step": 8}
        return {"required": {
            "model": ("MODEL", {"tooltip": "A DMD2 model (DMD2 Load UNet, or a base model through DMD2 LoRA)."}),
            "clip": ("CLIP", {"tooltip": "Text encoder(s) for the panel's prompt."}),
            "vae": ("VAE", {"tooltip": "Decodes frames when models/vae_approx has no taesd(xl)_decoder."}),
            "width": ("INT", {"default": 512, **size, "tooltip": "Frame width in pixels."}),
            "height": ("INT", {"default": 512, **size, "tooltip": "Frame height in pixels."}),
            "steps": ("INT", {"default": 1, "min": 1, "max": 8,
                              "tooltip": "UNet passes per frame: 1 is the fastest; the 4-step models look best "
                                         "at 4."}),
        }}

    def register(self, model: Any, clip: Any, vae: Any, width: int, height: int, steps: int) -> dict[str, Any]:
        LIVE.session = Session(model, clip, vae, width, height, steps)
        text = f"live session: {width}x{height}, {steps} step(s), decoder {LIVE.session.decoder}"
        log.info("[DMD2] %s", text)
        return {"ui": {"text": [text]}}


def _ms(timings: FrameTimings) -> dict[str, float]:
    return {name: round(seconds * 1000, 2) for name, seconds in timings.stages.items()}


@dataclass(frozen=True)
class Reply:
    """An HTTP answer of the live routes, independent of aiohttp: a JSON object or bytes of `content_type`."""

    status: int
    json: dict[str, Any] | None = None
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


async def answer_frame(live: Live, read_json: Callable[[], Awaitable[Any]]) -> Reply:
    """POST /dmd2/live/frame: parse and check the request (400 names the bad field), render it on the worker,
    answer the image (200) or why not (409 superseded / no session, 500 a failed frame). A client that goes away
    (the handler is cancelled) withdraws its request, so the worker moves on at once."""
    started = time.perf_counter()
    try:
        frame_request = parse_frame_request(await read_json())
    except ValueError as e:  # json.JSONDecodeError and undecodable bytes are ValueErrors too
        return Reply(400, {"error": str(e)})
    future = live.submit(frame_request)
    try:
        data, timings = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        live.worker.withdraw(future)
        raise
    except Superseded:
        return Reply(409, {"superseded": True, "request_id": frame_request.request_id})
    except NoSession as e:
        return Reply(409, {"error": str(e), "no_session": True})
    except DMD2Error as e:
        return Reply(500, {"error": str(e)})
    except Exception as e:  # noqa: BLE001 - report it to the panel, log the traceback here
        log.exception("[DMD2] live frame failed")
        return Reply(500, {"error": f"{type(e).__name__}: {e}"})
    stages = _ms(timings)
    stages["server"] = round((time.perf_counter() - started) * 1000, 2)
    return Reply(200, body=data, content_type=FORMATS[frame_request.format],
                 headers={"X-DMD2-Timings": json.dumps(stages), "Cache-Control": "no-store",
                          "X-DMD2-Request-Id": str(frame_request.request_id)})


def answer_status(live: Live) -> Reply:
    """GET /dmd2/live/status: whether a session is registered, the queue's state and the session's numbers."""
    session = live.session
    return Reply(200, {"ready": session is not None, "queue_busy": live.busy(),
                       **(session.describe() if session else {})})


def register_routes() -> None:
    """POST /dmd2/live/frame and GET /dmd2/live/status on ComfyUI's server; gate the prompt worker on frames."""
    routes = host.server_routes()
    LIVE.busy = host.queue_busy
    if not host.install_queue_gate(LIVE.lock):
        log.warning("[DMD2] live: ComfyUI's prompt queue changed (no get / get_tasks_remaining); live frames still "
                    "wait for an idle queue, but a prompt queued during a frame may run next to it")

    @routes.post("/dmd2/live/frame")
    async def frame(request: Any) -> Any:
        return to_response(await answer_frame(LIVE, request.json))

    @routes.get("/dmd2/live/status")
    async def status(request: Any) -> Any:
        return to_response(answer_status(LIVE))


def to_response(reply: Reply) -> Any:
    """The aiohttp response of a Reply."""
    from aiohttp import web

    if reply.json is not None:
        return web.json_response(reply.json, status=reply.status, headers=reply.headers)
    return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type, headers=reply.headers)
