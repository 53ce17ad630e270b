"""DMD2 Live without ComfyUI: the latest-wins worker, the queue gate, request parsing and one frame on fakes."""

from __future__ import annotations

import importlib
import io
import json
import threading
import time
import types

import pytest
import torch

from sampler.live import LatestWins, Superseded, check_cancelled, idle_gate
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
    ({"prompt": "x", "strength": 0}, "strength"), ({"prompt": "x", "seed": "a"}, "seed must be a whole number"),
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
    with pytest.raises(live.Superseded):  # the pack's own copy of sampler.live
        live.render_frame(live.LIVE.session, live.parse_frame_request({"prompt": "a"}), lambda: True)
    assert fake_host["sample"] == []


def test_no_session_says_what_to_do():
    state = live.Live()
    with pytest.raises(live.NoSession, match="DMD2 Live Session"):
        state.submit(live.parse_frame_request({"prompt": "a"})).result(5)


# --- bad requests and requests nobody waits for any more -------------------------------------------------------

@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "a", "seed": Infinity}', "seed"), ('{"prompt": "a", "seed": NaN}', "seed"),
    ('{"prompt": "a", "seed": -Infinity}', "seed"), ('{"prompt": "a", "seed": 1.5}', "seed"),
    ('{"prompt": "a", "seed": true}', "seed"), ('{"prompt": "a", "seed": [1]}', "seed"),
    ('{"prompt": "a", "seed": 18446744073709551616}', "seed"), ('{"prompt": "a", "seed": "1e400"}', "seed"),
    ('{"prompt": "a", "strength": Infinity}', "strength"), ('{"prompt": "a", "strength": NaN}', "strength"),
    ('{"prompt": "a", "strength": "x"}', "strength"), ('{"prompt": "a", "strength": true}', "strength"),
    ('{"prompt": "a", "strength": {}}', "strength"),
    ('{"prompt": "a", "format": []}', "format"), ('{"prompt": "a", "format": {"a": 1}}', "format"),
    ('{"prompt": "a", "format": null}', "format"), ('{"prompt": "a", "request_id": -1}', "request_id"),
    ('{"prompt": "a", "request_id": 1e300}', "request_id"), ('{"prompt": ["a"]}', "prompt"),
    ('{"prompt": null}', "prompt"), ('"just a string"', "JSON object"), ("null", "JSON object"),
])
def test_every_field_is_checked(raw, field):
    """What json.loads (and so aiohttp's request.json) accepts but the frame cannot use ends as a ValueError (400)
    naming the field, never as an error in the worker."""
    with pytest.raises(ValueError, match=field):
        live.parse_frame_request(json.loads(raw))


def test_numbers_the_panel_or_a_script_may_send():
    r = live.parse_frame_request({"prompt": "a", "seed": 7.0, "strength": "0.5", "request_id": "12"})
    assert (r.seed, r.strength, r.request_id) == (7, 0.5, 12)
    assert live.parse_frame_request({"prompt": "a", "seed": live.MAX_SEED}).seed == live.MAX_SEED


def test_a_cancelled_waiting_request_does_not_break_the_next_submit():
    """The reported bug: a pending request cancelled by its client made the next submit raise InvalidStateError."""
    started, release = threading.Event(), threading.Event()

    def render(payload, cancelled):
        if payload == "busy":
            started.set()
            release.wait(5)
        return payload

    worker = LatestWins(render)
    busy = worker.submit("busy")
    assert started.wait(5)
    waiting = worker.submit("waiting")
    assert waiting.cancel()  # the client went away while it waited
    newer = worker.submit("newer")  # drops the cancelled one: no InvalidStateError
    release.set()
    assert newer.result(5) == "newer" and waiting.cancelled()
    assert busy.result(5) == "busy"  # it never checked for newer requests: it finished
    assert worker.submit("again").result(5) == "again"


def test_a_withdrawn_request_stops_and_the_worker_goes_on():
    steps, release = [], threading.Event()

    def render(payload, cancelled):
        for i in range(100):
            check_cancelled(cancelled)
            steps.append((payload, i))
            if payload == "long" and i == 2:
                release.set()
            time.sleep(0.01)
        return payload

    worker = LatestWins(render)
    long = worker.submit("long")
    assert release.wait(5)
    worker.withdraw(long)  # the client of the running request went away
    _wait_until(lambda: worker._running is None)
    assert len([s for s in steps if s[0] == "long"]) < 100  # it stopped early
    assert worker.submit("next").result(10) == "next"
    queued = worker.submit("a")
    worker.withdraw(queued)
    assert worker.submit("b").result(10) == "b"


def test_failing_gates_and_renders_never_wedge_the_worker():
    def gate(cancelled):
        raise RuntimeError("the host queue is gone")

    worker = LatestWins(lambda payload, cancelled: payload, gate=gate)
    with pytest.raises(RuntimeError, match="queue is gone"):
        worker.submit("x").result(5)
    worker.gate = None
    assert worker.submit("y").result(5) == "y"

    def render(payload, cancelled):
        raise KeyboardInterrupt  # even a BaseException goes to the caller, not the thread

    worker.render = render
    with pytest.raises(KeyboardInterrupt):
        worker.submit("z").result(5)
    worker.render = lambda payload, cancelled: payload
    assert worker.submit("w").result(5) == "w"


def run_async(coroutine):
    import asyncio

    return asyncio.run(coroutine)


async def _json_of(text):
    return json.loads(text)


def test_route_answers_for_bad_requests_and_missing_sessions():
    state = live.Live()
    for raw in ('{"prompt": "a", "seed": Infinity}', '{"prompt": "a", "format": []}', "{not json", "",
                '{"prompt": "a", "strength": 2}'):
        reply = run_async(live.answer_frame(state, lambda raw=raw: _json_of(raw)))
        assert reply.status == 400 and reply.json["error"], (raw, reply)
    reply = run_async(live.answer_frame(state, lambda: _json_of('{"prompt": "a"}')))
    assert reply.status == 409 and reply.json["no_session"]
    assert live.answer_status(state).json == {"ready": False, "queue_busy": False}


def test_route_withdraws_the_request_of_a_client_that_went_away(fake_host):
    """aiohttp cancels the handler when its client disconnects: the frame's request is withdrawn, and the next
    request is served at once."""
    import asyncio

    state = live.Live()
    live.DMD2LiveSession().register("model", "clip", "vae", 64, 64, 1)
    state.session = live.LIVE.session
    entered, release = threading.Event(), threading.Event()

    def slow_render(request, cancelled):
        entered.set()
        while not release.is_set():
            check_cancelled(cancelled)
            time.sleep(0.01)
        return b"frame", live.FrameTimings({"unet": 0.1})

    state.worker.render = slow_render

    async def scenario():
        task = asyncio.ensure_future(live.answer_frame(state, lambda: _json_of('{"prompt": "a", "seed": 1}')))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        task.cancel()  # the client is gone
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        return await live.answer_frame(state, lambda: _json_of('{"prompt": "b", "seed": 2, "format": "png"}'))

    release_later = threading.Timer(0.5, release.set)  # the second render finishes on its own
    release_later.start()
    reply = run_async(scenario())
    assert reply.status == 200 and reply.body == b"frame" and reply.content_type == "image/png"
    assert json.loads(reply.headers["X-DMD2-Timings"])["unet"] == 100.0


def test_routes_through_aiohttp_when_it_is_installed(fake_host):
    """The real route handlers on an aiohttp application (aiohttp's own test client), where aiohttp is there."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = web.RouteTableDef()
    original = (host.server_routes, host.queue_busy, host.install_queue_gate)
    host.server_routes, host.queue_busy, host.install_queue_gate = (lambda: routes), (lambda: False), \
        (lambda lock: True)
    try:
        live.register_routes()
    finally:
        host.server_routes, host.queue_busy, host.install_queue_gate = original
    app = web.Application()
    app.add_routes(routes)

    async def scenario():
        async with TestClient(TestServer(app)) as client:
            bad = await client.post("/dmd2/live/frame", data='{"prompt": "a", "seed": Infinity}')
            listy = await client.post("/dmd2/live/frame", data='{"prompt": "a", "format": []}')
            live.DMD2LiveSession().register("model", "clip", "vae", 64, 64, 1)
            good = await client.post("/dmd2/live/frame", data='{"prompt": "a", "seed": 3}')
            status = await client.get("/dmd2/live/status")
            return (bad.status, (await bad.json())["error"], listy.status, good.status,
                    good.headers["Content-Type"], (await status.json())["ready"])

    bad, message, listy, good, content_type, ready = run_async(scenario())
    assert (bad, listy, good, content_type, ready) == (400, 400, 200, "image/jpeg", True) and "seed" in message
    assert aiohttp.__version__
