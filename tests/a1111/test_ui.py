"""The web UI of a real A1111: DMD2 in the txt2img / img2img sampler and scheduler dropdowns, the DMD2 tab and
settings, and still exactly one of each after "Reload UI" (which re-executes every extension's scripts/)."""

import json
import time
import urllib.request
from pathlib import Path


from tests.webui.harness import A1111, TXT2IMG, running


def _config(base):
    with urllib.request.urlopen(base + "config", timeout=60) as r:
        return json.load(r)


def _choices(config):
    out = {}
    for comp in config["components"]:
        props = comp.get("props", {})
        if props.get("elem_id") in ("txt2img_sampling", "img2img_sampling", "txt2img_scheduler", "img2img_scheduler"):
            out[props["elem_id"]] = [c[0] if isinstance(c, list) else c for c in props.get("choices", [])]
    return out


def test_dropdowns_tab_and_reload_ui(a1111, tmp_path):
    with running(A1111, a1111, tmp_path, ui=True) as srv:
        base = srv.url.removesuffix("sdapi/v1/")
        config = _config(base)
        choices = _choices(config)
        assert set(choices) == {"txt2img_sampling", "img2img_sampling", "txt2img_scheduler", "img2img_scheduler"}
        assert all(c.count("DMD2") == 1 for c in choices.values()), choices
        labels = [comp.get("props", {}).get("label") for comp in config["components"]]
        assert "DMD2 plan (trained timesteps)" in labels
        assert any(comp.get("props", {}).get("elem_id") == "tab_dmd2_tools" for comp in config["components"])

        button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") ==
                      "settings_restart_gradio")
        fn = next(i for i, d in enumerate(config["dependencies"])
                  if any((t[0] if isinstance(t, list) else t) == button for t in d["targets"]))
        request = urllib.request.Request(base + "run/predict", json.dumps({"fn_index": fn, "data": []}).encode(),
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
        deadline = time.monotonic() + 180
        while "Restarting UI" not in srv.log.read_text() or srv.log.read_text().count("Startup time") < 2:
            assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
            time.sleep(1)
        time.sleep(2)
        again = _choices(_config(base))
        assert all(c.count("DMD2") == 1 for c in again.values()), again
        assert [s["name"] for s in srv.get("samplers")].count("DMD2") == 1
        _, info, calls = srv.post("txt2img", dict(TXT2IMG, steps=2))
        assert "Sampler: DMD2," in info["infotexts"][0]
        assert [c["t"] for c in calls] == [[999.0], [499.0]]


def test_the_dmd2_tab_reports_a_damaged_file_in_the_core_s_words(a1111, tmp_path):
    """The DMD2 tab's Merge button, pressed through gradio's API: a damaged UNet file ends as the status line
    "Error: <the message `python -m sampler merge` prints>", nothing is written, and the UI keeps working."""
    from safetensors.torch import save_file
    import torch

    from sampler.errors import DMD2Error
    from sampler.models.convert import merge_checkpoint
    from tests.webui.harness import checkpoint

    good = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4), "time_embedding.linear_1.weight": torch.zeros(4)}, good)
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["conv_in.weight"] = [0, 16]  # an entry that is not an object
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    damaged = tmp_path / "damaged_unet.safetensors"
    damaged.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    base = str(checkpoint(A1111, a1111[0]))
    try:
        merge_checkpoint(base, tmp_path / "never.safetensors", unet=damaged)
    except DMD2Error as e:
        expected = f"Error: {e}"
    with running(A1111, a1111, tmp_path, ui=True) as srv:
        root = srv.url.removesuffix("sdapi/v1/")
        config = _config(root)
        button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "dmd2_merge")
        fn = next(i for i, d in enumerate(config["dependencies"])
                  if any((t[0] if isinstance(t, list) else t) == button for t in d["targets"]))
        body = {"fn_index": fn, "data": [base, str(damaged), "", 1.0, "dmd2_e2e_should_not_exist"]}
        request = urllib.request.Request(root + "run/predict", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as r:
            status = json.load(r)["data"][0]
        assert status == expected and "is a list, not an object" in status, status
        models = Path(a1111[0]) / "models" / "Stable-diffusion"
        assert not list(models.glob("dmd2_e2e_should_not_exist*"))
        assert [s["name"] for s in srv.get("samplers")].count("DMD2") == 1
