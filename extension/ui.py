"""The "DMD2" tab of A1111 / Forge: the merge tool (sampler.models.convert.merge_checkpoint) behind a button.

A1111 cannot load DMD2's diffusers UNet, and a DMD2 LoRA applied at run time costs time on every generation
(A1111 issue 16633); both become an ordinary checkpoint here, written to the host's Stable-diffusion folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..sampler.errors import user_message
from ..sampler.models.catalog import check_filename
from ..sampler.models.convert import merge_checkpoint
from ..sampler.models.files import check_output_path

log = logging.getLogger("dmd2")


def run_merge(base: str, unet: str, lora: str, strength: float, name: str, models_dir: str | Path) -> str:
    """Merge and report in one line (the tab's status); errors are reported, never raised into the UI, in the
    words the command line uses (`user_message`); an unexpected one is logged with its traceback."""
    name = (name or "").strip()
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    unet, lora = (unet or "").strip(), (lora or "").strip()
    try:
        check_filename(name)
        if not unet and not lora:
            return "Error: give a DMD2 UNet, a DMD2 LoRA to fuse, or both"
        output = check_output_path(Path(models_dir) / name, (".safetensors",), inputs=(base.strip(), unet, lora),
                                   exists_hint="choose another name")
        merge_checkpoint(Path(base.strip()), output, unet=Path(unet) if unet else None,
                         lora=Path(lora) if lora else None, lora_strength=float(strength))
    except Exception as e:  # noqa: BLE001 - the tab shows every failure as its status line
        message = user_message(e)
        if message is None:
            log.exception("[DMD2] merge failed")
            message = f"unexpected {type(e).__name__}: {e} (the traceback is in the console)"
        return f"Error: {message}"
    return f"Wrote {output}. Refresh the checkpoint list and pick it; sample with DMD2 / DMD2 at CFG 1."


def on_ui_tabs():
    """A1111 ui-tabs callback: [(component, title, elem_id)]."""
    import gradio as gr
    from modules import sd_models, shared

    models_dir = getattr(sd_models, "model_path", "models/Stable-diffusion")
    info = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Merge a DMD2 UNet (diffusers format) into an SDXL checkpoint, and/or fuse a DMD2 LoRA into "
                    f"its weights. The result is written to `{models_dir}` and loads like any checkpoint.")
        base = gr.Textbox(label="Base checkpoint (.safetensors path)", value=getattr(info, "filename", "") or "")
        unet = gr.Textbox(label="DMD2 UNet, diffusers format (optional)")
        lora = gr.Textbox(label="DMD2 LoRA to fuse into the weights (optional)")
        strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA strength (1.0 on SDXL base, 0.5-0.75 "
                                                                    "on finetunes)")
        name = gr.Textbox(label="Output file name", value="sdxl_dmd2_4step.safetensors")
        button = gr.Button("Merge", variant="primary", elem_id="dmd2_merge")
        status = gr.Markdown()
        button.click(fn=lambda *a: run_merge(*a, models_dir), inputs=[base, unet, lora, strength, name],
                     outputs=[status])
    return [(tab, "DMD2", "dmd2_tools")]
