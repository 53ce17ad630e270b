"""DMD2 Live in a real ComfyUI: a workflow with DMD2 Live Session registers the random-weight SD1.5 model, then
/dmd2/live/frame renders 64x64 frames (VAE, then a random-weight TAESD in models/vae_approx)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import torch
from PIL import Image
from safetensors.torch import save_file


def session_graph(width: int = 64) -> dict:
    return {
        "unet": {"class_type": "DMD2UNetLoader", "inputs": {"unet_name": "e2e_sd15_unet.safetensors",
                                                            "weight_dtype": "default", "plan": "sd15_1step"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "e2e_clip_l.safetensors",
                                                        "type": "stable_diffusion"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "e2e_sd_vae.safetensors"}},
        "live": {"class_type": "DMD2LiveSession", "inputs": {"model": ["unet", 0], "clip": ["clip", 0],
                                                             "vae": ["vae", 0], "width": width, "height": 64,
                                                             "steps": 1}},
    }


def frame(server, body: dict) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(server.url + "/dmd2/live/frame", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read(), json.loads(r.headers["X-DMD2-Timings"])
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {}


def test_live_frames_cache_the_prompt_and_return_images(server):
    assert server.get("/object_info/DMD2LiveSession")["DMD2LiveSession"]["category"] == "sampling/DMD2"
    server.run(session_graph())
    status = server.get("/dmd2/live/status")
    assert status["ready"] and status["decoder"] == "vae" and not status["queue_busy"], status

    code, first, t1 = frame(server, {"prompt": "a lighthouse at dusk", "seed": 3, "request_id": 1})
    assert code == 200, first[:500]
    code, second, t2 = frame(server, {"prompt": "a lighthouse at dusk", "seed": 3, "request_id": 2})
    assert code == 200, second[:500]
    for data, t in ((first, t1), (second, t2)):
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (64, 64)
        assert {"wait", "encode", "unet", "decode", "image", "server"} <= set(t), t
    assert t2["encode"] < 5 and t2["encode"] < t1["encode"], (t1, t2)  # the second time from the prompt cache
    print(f"\nframe timings ms, first: {t1}\nsecond (prompt cached): {t2}")
    status = server.get("/dmd2/live/status")
    assert status["prompt_cache"] == {"hits": 1, "misses": 1} and status["frames"] == 2, status

    code, data, t3 = frame(server, {"prompt": "a lighthouse at dawn", "seed": 3, "strength": 0.5, "request_id": 3,
                                    "format": "png"})
    assert code == 200 and Image.open(io.BytesIO(data)).format == "PNG"
    code, data, _ = frame(server, {"prompt": "x", "strength": 2})
    assert code == 400 and b"strength" in data


def test_live_frames_decode_with_taesd_when_present(server):
    from sampler.models.taesd import tiny_decoder

    torch.manual_seed(0)
    path = server.base / "models" / "vae_approx" / "taesd_decoder.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_decoder().state_dict().items()}, str(path))
    try:
        server.run(session_graph(width=72))  # changed input: the session node runs again and finds the decoder
        status = server.get("/dmd2/live/status")
        assert status["decoder"] == "taesd (taesd_decoder.safetensors)" and status["width"] == 72, status
        code, data, t = frame(server, {"prompt": "a red bicycle", "seed": 1, "request_id": 1})
        assert code == 200, data[:500]
        assert Image.open(io.BytesIO(data)).size == (72, 64)
        print(f"\nframe timings ms with TAESD: {t}")
    finally:
        path.unlink()


def test_live_frame_waits_for_a_running_prompt(server):
    """A frame asked for while a queue prompt runs starts only after it: frames never run next to a prompt."""
    import threading
    import time

    from test_comfyui_e2e import Graph

    server.run(session_graph())
    g = Graph(server, sleep=1.5)  # the probe sleeps 1.5 s in each UNet call of the queued prompt
    g.save(g.dmd2_ksampler(steps=2))
    prompt_id = server.queue(g.nodes)
    deadline = time.monotonic() + 300
    while not g.calls():  # the prompt is inside its first UNet call
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.05)
    assert server.get("/dmd2/live/status")["queue_busy"]
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=frame(server, {"prompt": "queue first", "seed": 2})))
    thread.start()
    server.wait(prompt_id)
    done_at = time.monotonic()
    thread.join(300)
    code, data, timings = result["r"]
    assert code == 200, data[:500]
    assert timings["wait"] >= 1000, timings  # it waited for (most of) the prompt's 3 s
    assert len(g.calls()) == 2 and time.monotonic() >= done_at


def test_bad_requests_are_400_and_a_vanished_client_wedges_nothing(server):
    """Numbers JSON allows but a frame cannot use, and unhashable choices, are 400s naming the field; a client that
    sends a frame request and disconnects leaves the worker free for the next request."""
    import socket

    server.run(session_graph())
    for body, field in (({"prompt": "a", "seed": float("inf")}, "seed"), ({"prompt": "a", "format": []}, "format"),
                        ({"prompt": "a", "strength": float("nan")}, "strength"),
                        ({"prompt": "a", "request_id": {"x": 1}}, "request_id")):
        code, data, _ = frame(server, body)
        assert code == 400 and field in json.loads(data)["error"], (body, code, data[:300])
    payload = json.dumps({"prompt": "gone", "seed": 4}).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /dmd2/live/frame HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    code, data, timings = frame(server, {"prompt": "still served", "seed": 5, "request_id": 9})
    assert code == 200, data[:500]
    assert Image.open(io.BytesIO(data)).size == (64, 64)
