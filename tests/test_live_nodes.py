"""DMD2 Live without ComfyUI: the latest-wins worker, the queue gate, request parsing and one frame on fakes."""

from __future__ import annotations

import importlib
import io
import threading
import time
import types

import pytest
import torch

from sampler.app.live import LatestWins, Superseded, check_cancelled, idle_gate
from tests.test_nodes import PACK, _import_pack

_import_pack()
live = importlib.import_module(PACK + ".nodes.live")
host = importlib.import_module(PACK + ".nodes.host")


def _wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_latest_wins_drops_queued_and_cancels_in_flight():
    started, release, rendered = threading.Event(), threading.Event(), []

    def render(payload, cancelled):
        started.set()
        if payload == "a":
            release.wait(5)
            check_cancelled(cancelled)  # a newer request arrived meanwhile: stop here
        rendered.append(payload)
        return payload.upper()

    worker = LatestWins(render)
    a = worker.submit("a")
    assert started.wait(5)
    b, c = worker.submit("b"), worker.submit("c")  # b is replaced by c before it starts
    release.set()
    assert c.result(5) == "C"
    with pytest.raises(Superseded):
        b.result(5)
    with pytest.raises(Superseded):
        a.result(5)
    assert rendered == ["c"]


def test_latest_wins_reports_errors_and_keeps_running():
    def render(payload, cancelled):
        if payload == "bad":
            raise RuntimeError("boom")
        return payload

    worker = LatestWins(render)
    with pytest.raises(RuntimeError, match="boom"):
        worker.submit("bad").result(5)
    assert worker.submit("ok").result(5) == "ok"


def test_idle_gate_waits_for_idle_and_gives_up_when_superseded():
    lock, busy = threading.Lock(), [True]
    entered = threading.Event()

    def frame():
        with idle_gate(lock, lambda: busy[0], lambda: False, poll=0.005):
            entered.set()

    t = threading.Thread(target=frame)
    t.start()
    time.sleep(0.05)
    assert not entered.is_set() and not lock.locked()  # waiting, not holding the host off
    busy[0] = False
    t.join(5)
    assert entered.is_set() and not lock.locked()
    with pytest.raises(Superseded):
        with idle_gate(lock, lambda: True, lambda: True, poll=0.005):
            pass
    assert not lock.locked()


class FakeQueue:
    """The two methods of ComfyUI's PromptQueue the gate relies on."""

    def __init__(self):
        self.items, self.running = [], 0

    def get(self, timeout=None):
        if not self.items:
            return None
        self.running += 1
        return self.items.pop(0), 0

    def get_tasks_remaining(self):
        return len(self.items) + self.running


def test_queue_gate_prompt_waits_for_the_frame_in_flight_and_frames_wait_for_prompts(monkeypatch):
    queue = FakeQueue()
    monkeypatch.setattr(host, "_prompt_queue", lambda: queue)
    state = live.Live(busy=lambda: queue.get_tasks_remaining() > 0)
    assert host.install_queue_gate(state.lock) and host.install_queue_gate(state.lock)  # twice: wrapped once
    in_frame, finish = threading.Event(), threading.Event()

    def render(request, cancelled):
        in_frame.set()
        finish.wait(5)
        return "frame"

    state.worker.render = render
    future = state.submit("r1")
    assert in_frame.wait(5)
    queue.items.append("prompt")
    got = []
    prompt_worker = threading.Thread(target=lambda: got.append(queue.get(timeout=1)))
    prompt_worker.start()
    time.sleep(0.05)
    assert not got  # taken off the queue, but held until the frame ends
    finish.set()
    prompt_worker.join(5)
    assert got == [("prompt", 0)] and future.result(5) == "frame"

    in_frame.clear()
    future = state.submit("r2")  # the prompt is running: the frame waits for it
    time.sleep(0.1)
    assert not in_frame.is_set()
    queue.running = 0
    assert future.result(5) == "frame"


def test_queue_gate_reports_a_changed_queue(monkeypatch):
    monkeypatch.setattr(host, "_prompt_queue", lambda: types.SimpleNamespace(get=lambda timeout=None: None))
    assert host.install_queue_gate(threading.Lock()) is False


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"), ({"prompt": 3}, "prompt"), ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "strength": 0}, "strength"), ({"prompt": "x", "seed": "a"}, "integers"),
    ({"prompt": "x", "format": "gif"}, "format"),
])
def test_parse_frame_request_rejects(body, message):
    with pytest.raises(ValueError, match=message):
        live.parse_frame_request(body)


def test_parse_frame_request_defaults():
    r = live.parse_frame_request({"prompt": "a cat", "seed": "7", "request_id": 3})
    assert (r.prompt, r.seed, r.strength, r.request_id, r.format) == ("a cat", 7, 1.0, 3, "jpeg")


def test_live_session_node_schema():
    cls = live.DMD2LiveSession
    assert cls.CATEGORY == "sampling/DMD2" and cls.OUTPUT_NODE and cls.RETURN_TYPES == ()
    required = cls.INPUT_TYPES()["required"]
    assert [required[k][0] for k in ("model", "clip", "vae")] == ["MODEL", "CLIP", "VAE"]
    assert required["steps"][1]["default"] == 1


@pytest.fixture
def fake_host(monkeypatch):
    calls = {"encode": [], "sample": []}

    def encode_prompt(clip, text):
        calls["encode"].append(text)
        return [[torch.ones(1, 1, 8), {}]]

    def sample_frame(model, seed, sigmas, sampler, positive, latent, callback):
        calls["sample"].append((seed, float(sigmas[0]), latent.clone()))
        callback(0, latent, latent, 1)
        return latent + seed + 1

    monkeypatch.setattr(host, "encode_prompt", encode_prompt)
    monkeypatch.setattr(host, "sample_frame", sample_frame)
    monkeypatch.setattr(host, "ksampler", lambda fn: fn)
    monkeypatch.setattr(host, "model_base", lambda model: "sd15")
    monkeypatch.setattr(host, "tiny_decoder_file", lambda base: None)
    monkeypatch.setattr(host, "torch_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(host, "vae_decode", lambda vae, s: torch.full((s.shape[2] * 8, s.shape[3] * 8, 3), 0.5))
    monkeypatch.setattr(live, "node_sigmas", lambda model, steps, denoise: torch.tensor([14.6 * denoise, 0.0]))
    return calls


def test_node_registers_session_and_frames_cache_prompts_and_use_the_anchor(fake_host):
    ui = live.DMD2LiveSession().register("model", "clip", "vae", 64, 48, 1)
    session = live.LIVE.session
    assert "64x48" in ui["ui"]["text"][0] and session.model == "model" and session.decoder == "vae"
    request = live.parse_frame_request
    data, timings = live.render_frame(session, request({"prompt": "a", "seed": 5}), lambda: False)
    assert set(timings.stages) == {"wait", "encode", "unet", "decode", "image"}
    from PIL import Image

    assert Image.open(io.BytesIO(data)).size == (64, 48)
    live.render_frame(session, request({"prompt": "a", "seed": 5, "strength": 0.5}), lambda: False)
    live.render_frame(session, request({"prompt": "b", "seed": 6, "strength": 0.5}), lambda: False)
    assert fake_host["encode"] == ["a", "b"]  # "a" came from the cache the second time
    (s1, sigma1, start1), (s2, sigma2, start2), (s3, sigma3, start3) = fake_host["sample"]
    assert sigma1 == pytest.approx(14.6) and not start1.any()
    assert sigma2 == pytest.approx(7.3) and torch.equal(start2, torch.full((1, 4, 6, 8), 6.0))  # the anchor of seed 5
    assert sigma3 == pytest.approx(14.6) and not start3.any()  # no anchor for seed 6: a full frame
    assert session.describe()["prompt_cache"] == {"hits": 1, "misses": 2} and session.describe()["frames"] == 3


def test_frame_stops_when_superseded(fake_host):
    live.DMD2LiveSession().register("model", "clip", "vae", 64, 64, 1)
    with pytest.raises(live.Superseded):  # the pack's own copy of sampler.app.live
        live.render_frame(live.LIVE.session, live.parse_frame_request({"prompt": "a"}), lambda: True)
    assert fake_host["sample"] == []


def test_no_session_says_what_to_do():
    state = live.Live()
    with pytest.raises(live.NoSession, match="DMD2 Live Session"):
        state.submit(live.parse_frame_request({"prompt": "a"})).result(5)
