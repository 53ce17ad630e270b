"""Shared fixtures: tiny real diffusers UNets (random weights) for reference tests."""

import pytest

from sampler.models.tiny import tiny_sd15_unet, tiny_sdxl_unet


@pytest.fixture(scope="session")
def sd15_unet():
    return tiny_sd15_unet()


@pytest.fixture(scope="session")
def sdxl_unet():
    return tiny_sdxl_unet()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision, device); the command makes its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
