"""The shapes proof's own measures and outputs: shape statistics, figures, the results tables (the proof itself is
a benchmark, `python -m distill shapes-proof`, too long for a test)."""

import pytest
import torch

from distill.shapes.data import render
from distill.shapes.plots import PALETTE, labelled_rows, line_chart, nice_ticks
from distill.shapes.proof import RUNS, aggregate, appearance_table, best_seed, row_key, table
from distill.shapes.statistics import shape_measurements, summarise


def square_image(left: int, top: int, side: int, background: float = 0.1, colour=(0.9, 0.15, 0.15)) -> torch.Tensor:
    """A (3, 32, 32) image in [-1, 1]: a sharp axis-aligned square on a flat grey background, drawn by slicing."""
    image = torch.full((3, 32, 32), background)
    image[:, top:top + side, left:left + side] = torch.tensor(colour)[:, None, None]
    return image * 2 - 1


def test_measurements_of_a_sharp_square_are_its_geometry():
    m = shape_measurements(square_image(4, 10, 12)[None])
    assert m["size"].item() == pytest.approx(12, abs=1e-4)
    assert m["centre_x"].item() == pytest.approx(4 + 6, abs=1e-4)
    assert m["centre_y"].item() == pytest.approx(10 + 6, abs=1e-4)
    assert m["background"].item() == pytest.approx(0.1, abs=1e-6)
    assert m["edge_width"].item() == 0  # no pixel is partly covered
    assert m["contrast"].item() == pytest.approx(((0.9 - 0.1) ** 2 + 2 * (0.15 - 0.1) ** 2) ** 0.5, abs=1e-5)
    assert m["grain"].item() == pytest.approx(0, abs=1e-6)
    expected = (0.1 * (1024 - 144) + (0.9 + 0.15 + 0.15) / 3 * 144) / 1024
    assert m["brightness"].item() == pytest.approx(expected, abs=1e-6)


def test_a_blurred_edge_is_wider_and_the_size_holds():
    sharp = square_image(8, 8, 14)
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(sharp[None], (1, 1, 1, 1), mode="replicate"),
                                         kernel, groups=3)
    m_sharp, m_blur = shape_measurements(sharp[None]), shape_measurements(blurred)
    assert m_blur["edge_width"].item() > 1.0 > m_sharp["edge_width"].item()
    assert m_blur["size"].item() == pytest.approx(14, rel=0.03)  # a box blur keeps the area


def test_grain_is_the_background_noise():
    noise = 0.02 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = shape_measurements((square_image(8, 8, 10) + 2 * noise)[None])
    assert m["grain"].item() == pytest.approx(0.02, rel=0.1)


def test_measured_sizes_of_rendered_squares_follow_the_renderer():
    """render draws squares 10-24 px across, uniformly: their measured sizes average 17 with sd 14 / sqrt(12)."""
    m = shape_measurements(render(["blue square"] * 400, torch.Generator().manual_seed(3)))
    assert m["size"].mean().item() == pytest.approx(17, abs=0.5)
    assert m["size"].std().item() == pytest.approx(14 / 12**0.5, rel=0.1)
    assert 0.5 < m["edge_width"].mean().item() < 1.0  # one-pixel antialiased edges


def test_a_collapsed_set_has_no_spread_and_real_data_has_one():
    prompts = ["red square"] * 100 + ["red circle"] * 100
    real = shape_measurements(render(prompts, torch.Generator().manual_seed(0)))
    collapsed = shape_measurements(torch.stack([square_image(9, 9, 14)] * 100 + [square_image(5, 7, 18)] * 100))
    summary = summarise(collapsed, real, prompts)
    assert summary["size_spread"] == pytest.approx(0, abs=1e-3)  # two sizes, but one per prompt
    assert summary["position_spread"] == pytest.approx(0, abs=1e-3)
    assert summarise(real, real, prompts)["size_spread"] == pytest.approx(1)
    assert summarise(real, real, prompts)["position_spread"] == pytest.approx(1)


def test_spreads_are_pooled_within_prompts():
    """Sizes 1, 3 for one prompt and 11, 13 for another: within-prompt sd sqrt(2) each, although overall it is ~5."""
    from distill.shapes.statistics import pooled_spread

    values = torch.tensor([1.0, 3.0, 11.0, 13.0])
    assert pooled_spread(values, ["a", "a", "b", "b"]) == pytest.approx(2**0.5)
    assert pooled_spread(values, ["a", "b", "a", "b"]) == pytest.approx(50**0.5)


def test_nice_ticks():
    assert nice_ticks(0, 10, log=False) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(90, 6000, log=True) == [100, 200, 500, 1000, 2000, 5000]


def test_line_chart_draws_every_run_in_its_colour():
    series = {"a": ([0, 1, 2], [[300, 200, 100], [320, 180, 110]]), "b": ([0, 1, 2], [[300, 400, 500]])}
    image = line_chart(series, "t", "x", "y", log_y=True, reference=("teacher", 250))
    assert image.size == (720, 420)
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert PALETTE[0] in colours and PALETTE[1] in colours


def test_labelled_rows_stack_the_grids():
    from PIL import Image

    sheet = labelled_rows([("one", Image.new("RGB", (100, 20), "red")), ("two", Image.new("RGB", (80, 20), "blue"))],
                          label_width=50)
    assert sheet.size == (150, 52)
    assert sheet.getpixel((60, 5)) == (255, 0, 0) and sheet.getpixel((60, 30)) == (0, 0, 255)


def fake_row(fd: float, accuracy: float) -> dict:
    return {"fd": fd, "accuracy": accuracy, "size_spread": 1.0, "position_spread": 0.5, "size": 14.0,
            "background": 0.1, "edge_width": 0.8, "brightness": 0.18, "contrast": 0.8, "grain": 0.01}


def test_tables_give_students_mean_and_spread_over_seeds():
    name = RUNS[0].name
    results = {"real data": fake_row(40, 1.0), **{row_key(name, s): fake_row(fd, 0.9) for s, fd in
                                                   ((0, 100), (1, 200), (2, 300))}}
    rows = aggregate(results, seeds=(0, 1, 2))
    assert [n for n, _ in rows] == ["real data", name]
    text = table(rows)
    assert f"| {name} | 4 | 200 ± 100 | 90.0 ± 0.0% |" in text
    assert "| real data | - | 40 | 100.0% |" in text
    assert f"| {name} | 14.0 | 0.100 | 0.80 | 0.180 |" in appearance_table(rows)
    assert best_seed(results, name) == 0
    with pytest.raises(ValueError, match="no trained"):
        best_seed(results, RUNS[1].name)
