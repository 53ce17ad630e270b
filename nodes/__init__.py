"""ComfyUI glue: thin node classes that translate between the graph and the host-free core in `sampler/`."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
