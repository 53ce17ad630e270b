"""End to end in a real Forge Classic (Haoming02, classic 1f95d717): the shared A1111-family body
(tests/webui/shared_e2e.py).

Forge Classic is an A1111 1.7-era base without modules.sd_schedulers: its samplers carry their schedule in the name
and there is no /sdapi/v1/schedulers, so the DMD2 sampler carries the DMD2 schedule itself (the shared tests send no
scheduler and check no "Schedule type" there).
"""

from tests.webui.shared_e2e import *  # noqa: F403  (the tests every A1111-family host shares, run here against it)
from tests.webui.shared_e2e import request


def test_no_schedulers_endpoint_and_dmd2_still_exact(server):
    import urllib.error
    try:
        server.get("schedulers")
        raise AssertionError("Forge Classic answered /sdapi/v1/schedulers: it is not the host this suite expects")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    _, info, calls = server.post("txt2img", request(server, steps=4))
    assert [c["t"] for c in calls] == [[999.0], [749.0], [499.0], [249.0]]
    assert "DMD2 plan: SDXL 4-step" in info["infotexts"][0] and "Schedule type" not in info["infotexts"][0]
