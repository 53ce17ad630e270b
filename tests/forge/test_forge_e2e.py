"""End to end in a real Forge (lllyasviel, dfdcbab6): the extension loads, DMD2 is listed, and it runs exact DMD2.

Forge is started headless (API only, --always-cpu; tests/webui/harness.py) with this repository symlinked into its
extensions folder, plus tests/webui/probe (a test-only extension that logs every UNet call and, in Forge, the sampler
objects of each pass), on a free 127.0.0.1 port, with a real-architecture SD1.5 checkpoint (FORGE_CKPT, else the
first one in models/Stable-diffusion) at 64x64; the symlinks are removed afterwards. The tests both hosts share are
in tests/webui/shared_e2e.py; Forge needs nothing beyond them.
"""

from tests.webui.shared_e2e import *  # noqa: F403  (the tests every A1111-family host shares, run here against Forge)
