"""The proof's figures, drawn with Pillow alone (no plotting library to install): line charts of a measure over
training, one line per run (the mean over seeds, with the seeds' range as a light band), and labelled image grids.
"""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

#: Line colours, in the order runs are given (Tableau 10's first few: distinct in colour and in greyscale).
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))
_MARGIN = (70, 56, 20, 50)  # left, top, right, bottom: room for tick labels, the title and the x label


def _font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def nice_ticks(low: float, high: float, log: bool, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: 1-2-5 steps on a linear axis, 1-2-5 x 10^k on a log axis."""
    if log:
        ticks = [m * 10.0**k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                 for m in (1, 2, 5)]
        return [t for t in ticks if low <= t <= high]
    raw = (high - low) / max(1, count)
    magnitude = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[Sequence[float]]]], title: str, x_label: str,
               y_label: str, log_y: bool = False, reference: tuple[str, float] | None = None,
               size: tuple[int, int] = (720, 420)) -> Image.Image:
    """A chart of runs: `series` maps a run's name to (x values, [y values of each seed]).

    Each run is drawn as the mean over its seeds, with a light band from the lowest to the highest seed; a
    `reference` (label, y) is a dashed horizontal line, e.g. the teacher's value. `log_y` for measures that span
    orders of magnitude (a Frechet distance falling from thousands to hundreds).
    """
    width, height = size
    left, top, right, bottom = _MARGIN
    values = [y for _, seeds in series.values() for ys in seeds for y in ys] + ([reference[1]] if reference else [])
    xs_all = [x for xs, _ in series.values() for x in xs]
    y_low, y_high = min(values), max(values)
    if log_y:
        y_low, y_high = max(y_low, 1e-9) / 1.2, y_high * 1.2
    else:
        pad = 0.05 * (y_high - y_low or abs(y_high) or 1.0)
        y_low, y_high = y_low - pad, y_high + pad
    x_low, x_high = min(xs_all), max(xs_all)
    x_high = x_high if x_high > x_low else x_low + 1

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (width - left - right)

    def py(y: float) -> float:
        fy = ((math.log(y) - math.log(y_low)) / (math.log(y_high) - math.log(y_low)) if log_y
              else (y - y_low) / (y_high - y_low))
        return height - bottom - fy * (height - top - bottom)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image, "RGBA")
    font = _font()
    for y in nice_ticks(y_low, y_high, log_y):
        draw.line([(left, py(y)), (width - right, py(y))], fill=(230, 230, 230))
        draw.text((left - 6, py(y)), _label(y), fill="black", font=font, anchor="rm")
    for x in nice_ticks(x_low, x_high, False):
        draw.text((px(x), height - bottom + 6), _label(x), fill="black", font=font, anchor="ma")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if reference is not None:
        name, y = reference
        for x0 in range(left, width - right, 12):
            draw.line([(x0, py(y)), (min(x0 + 6, width - right), py(y))], fill="black", width=1)
        draw.text((width - right - 4, py(y) - 3), name, fill="black", font=font, anchor="rd")
    legend_x = width - right - 52 - max(draw.textlength(name, font=font) for name in series)
    for k, (name, (xs, seeds)) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        columns = list(zip(*seeds))
        if len(seeds) > 1:
            band = ([(px(x), py(max(c))) for x, c in zip(xs, columns)]
                    + [(px(x), py(min(c))) for x, c in reversed(list(zip(xs, columns)))])
            draw.polygon(band, fill=(*colour, 50))
        mean = [(px(x), py(sum(c) / len(c))) for x, c in zip(xs, columns)]
        draw.line(mean, fill=colour, width=2)
        legend_y = top + 14 + 18 * k
        draw.line([(legend_x, legend_y), (legend_x + 24, legend_y)], fill=colour, width=3)
        draw.text((legend_x + 30, legend_y), name, fill="black", font=font, anchor="lm")
    draw.text((width / 2, 12), title, fill="black", font=_font(15), anchor="ma")
    draw.text((width / 2, height - 8), x_label, fill="black", font=font, anchor="md")
    draw.text((8, top - 6), y_label, fill="black", font=font, anchor="ld")
    return image


def labelled_rows(rows: Sequence[tuple[str, Image.Image]], label_width: int = 220) -> Image.Image:
    """Image grids stacked top to bottom, each with its label to the left: one picture of every table row."""
    width = label_width + max(grid.width for _, grid in rows)
    sheet = Image.new("RGB", (width, sum(grid.height + 6 for _, grid in rows)), "white")
    draw, font, y = ImageDraw.Draw(sheet), _font(14), 0
    for label, grid in rows:
        sheet.paste(grid, (label_width, y))
        draw.text((8, y + grid.height / 2), label, fill="black", font=font, anchor="lm")
        y += grid.height + 6
    return sheet
