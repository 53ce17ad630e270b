"""A1111 / Forge glue: registers the DMD2 sampler and scheduler with the host, calling the core in `sampler/`."""
