"""Pictures and the HTML report: colours, palette PNGs, overlays, and the page in Chromium."""

import re

import numpy as np
import pytest
from PIL import Image

from spectral_jax import viz
from spectral_jax.datasets import images as image_io


def test_heatmap_is_symmetric_around_zero():
  v = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
  rgb = viz.heatmap(v).astype(int)
  assert rgb.shape == (1, 5, 3)
  assert rgb[0, 4, 0] > rgb[0, 4, 2] and rgb[0, 0, 2] > rgb[0, 0, 0]  # + red, − blue
  assert rgb[0, 2].min() > 200                                        # 0 is near white
  np.testing.assert_array_equal(viz.heatmap(2 * v), rgb)              # scale-free by default
  assert (viz.heatmap(v, vmax=20.0)[0, 4] != rgb[0, 4]).any()
  with pytest.raises(ValueError, match=r"\(H, W\)"):
    viz.heatmap(np.zeros(5))


def test_label_png_round_trip(tmp_path):
  labels = np.arange(12, dtype=np.int32).reshape(3, 4) * 20
  viz.label_png(tmp_path / "l.png", labels)
  with Image.open(tmp_path / "l.png") as img:
    assert img.mode == "P" and img.getpalette()[3:6] == [128, 0, 0]
  np.testing.assert_array_equal(viz.read_label_png(tmp_path / "l.png"), labels)
  with pytest.raises(ValueError, match="255"):
    viz.label_png(tmp_path / "bad.png", labels + 100)


@pytest.fixture
def photo():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_overlay_draws_mask_box_and_segments(photo):
  mask = np.zeros((40, 60), bool)
  mask[10:30, 20:40] = True
  segments = np.zeros((40, 60), np.int32)
  segments[:, 30:] = 2
  box = [20, 10, 40, 30]
  out = viz.overlay(photo, mask, segments, box)
  assert out.shape == (40, 2 * 60 + 4, 3)  # two panels, a white border between
  left = out[:, :60]
  np.testing.assert_array_equal(left[29, 30], viz.BOX_COLOUR)         # bottom edge of the box
  np.testing.assert_array_equal(left[35, 5], photo[35, 5])            # untouched outside
  assert not np.array_equal(left[20, 30], photo[20, 30])              # tinted inside the mask
  right = out[:, 64:]
  np.testing.assert_array_equal(right[35, 5], photo[35, 5])           # background untinted
  assert not np.array_equal(right[35, 50], photo[35, 50])             # segment 2 tinted
  with pytest.raises(ValueError, match="match"):
    viz.overlay(photo, mask[:5], segments, box)


def test_eigenvector_panel_tiles(photo):
  maps = [np.linspace(-1, 1, 40 * 60).reshape(40, 60)] * 3
  out = viz.eigenvector_panel(photo, maps, [0.5, 0.7, 0.9])
  assert out.shape[0] == 40 and out.shape[1] >= 4 * 60
  with pytest.raises(ValueError, match="expected"):
    viz.eigenvector_panel(photo, [np.zeros((4, 4))], [0.1])


def _page(tmp_path, photo, missing=False):
  image_io.write_png(tmp_path / "a b.png", photo)   # a space: links must be URL-quoted
  image_io.write_png(tmp_path / "c.png", photo[::2])
  entries = [{"name": "<one>", "files": {"x": "a b.png", "y": "c.png"}, "meta": {"box": [1, 2]}},
             {"name": "two", "files": {"x": "gone.png" if missing else "c.png"}, "meta": {}}]
  viz.write_index_html(tmp_path / "index.html", entries, columns=[("x", "X"), ("y", "Y")],
                       failures={"bad.jpg": "cannot read"})
  return tmp_path / "index.html"


def test_index_html_links_are_relative_and_escaped(tmp_path, photo):
  text = _page(tmp_path, photo).read_text()
  assert 'src="a%20b.png"' in text and "&lt;one&gt;" in text and "bad.jpg: cannot read" in text
  assert str(tmp_path) not in text


@pytest.mark.parametrize("missing", [False, True])
def test_index_html_renders_in_chromium(tmp_path, photo, missing):
  chromium = viz.find_chromium()
  if chromium is None:
    print("chromium not installed: skipping the browser check")
    pytest.skip("chromium not installed")
  loaded, total = viz.images_loaded_in_browser(_page(tmp_path, photo, missing), chromium)
  assert total == 3
  assert loaded == (2 if missing else 3)  # the page's check does see a broken picture


def test_overlay_draws_every_box_best_on_top(photo):
  mask = np.zeros((40, 60), bool)
  segments = np.zeros((40, 60), np.int32)
  boxes = np.array([[20, 10, 40, 30], [2, 26, 14, 38]])  # (the caption covers the top left)
  left = viz.overlay(photo, mask, segments, boxes)[:, :60]
  np.testing.assert_array_equal(left[29, 30], viz.BOX_COLOUR)        # best box
  np.testing.assert_array_equal(left[37, 6], viz.OTHER_BOX_COLOUR)   # the second one
  np.testing.assert_array_equal(left[35, 50], photo[35, 50])         # outside both


def _wide_page(tmp_path):
  """Three photos with pictures far wider than a window (3000 px): a main one and four more."""
  rng = np.random.default_rng(1)
  image_io.write_png(tmp_path / "main.png", rng.integers(0, 256, (600, 3000, 3), dtype=np.uint8))
  image_io.write_png(tmp_path / "side.png", rng.integers(0, 256, (400, 2400, 3), dtype=np.uint8))
  files = {"m": "main.png", "a": "side.png", "b": "side.png", "c": "side.png", "d": "side.png"}
  entries = [{"name": f"photo{i}", "files": files,
              "meta": {"boxes": "; ".join(["[100, 200, 3000, 4000]"] * 12)}} for i in range(3)]
  viz.write_index_html(tmp_path / "index.html", entries,
                       columns=[("m", "overlay"), ("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")],
                       legend="<div class='legend'>LEGEND</div>")
  return tmp_path / "index.html"


def test_index_html_fits_a_1400_px_window_by_its_css(tmp_path):
  """No fixed width above 1400 px, the content capped below it, every picture scaled to its
  box, the first column the main picture, the legend before the photos."""
  text = _wide_page(tmp_path).read_text()
  style = text[text.index("<style>"):text.index("</style>")]
  widths = [int(w) for w in re.findall(r"(?<![-\w])(?:max-|min-)?width:\s*(\d+)px", style)]
  assert widths and max(widths) <= 1400
  assert re.search(rf"body \{{[^}}]*max-width: {viz.PAGE_MAX_WIDTH}px", style)
  assert viz.PAGE_MAX_WIDTH <= 1400 - 2 * 16   # with the page's 1em padding either side
  assert re.search(r"img \{[^}]*max-width: 100%", style)
  assert "<table" not in text.split("</h1>")[1].split("LEGEND")[0]   # no wide results table
  assert text.index("LEGEND") < text.index("photo0")
  for section in text.split('<section class="photo">')[1:]:
    assert section.index('class="main"') < section.index('class="thumbs"')
    assert 'src="main.png"' in section.split('class="thumbs"')[0]


def test_index_html_fits_a_1400_px_window_in_chromium(tmp_path):
  chromium = viz.find_chromium()
  if chromium is None:
    print("chromium not installed: skipping the browser check")
    pytest.skip("chromium not installed")
  layout = viz.page_layout_in_browser(_wide_page(tmp_path), chromium, window_width=1400)
  assert layout["window_width"] == 1400
  assert layout["page_width"] <= layout["window_width"]    # no horizontal scrolling
  shown = layout["images"]
  assert len(shown) == 3 * 5
  main = [w for h, w in shown if h == "overlay"]
  others = [w for h, w in shown if h != "overlay"]
  assert len(main) == 3 and min(main) > 1.5 * max(others)  # the overlay is the largest
  assert max(main) <= viz.PAGE_MAX_WIDTH


def test_markdown_html_tables_and_paragraphs():
  md = "A <b> line\nwrapped.\n\n| a | b |\n|---|---|\n| 1 & 2 | x |\nafter"
  out = viz.markdown_html(md)
  assert out == ("<p>A &lt;b&gt; line wrapped.</p><table><tr><th>a</th><th>b</th></tr>"
                 "<tr><td>1 &amp; 2</td><td>x</td></tr></table><p>after</p>")


def _curve_pixels(img, index=0):
  """(rows, cols) of the pixels painted in curve ``index``'s colour."""
  return np.nonzero((img == np.array(viz.SERIES_COLOURS[index], np.uint8)).all(-1))


def test_line_plot_puts_larger_values_higher_and_spans_the_x_range():
  x = np.linspace(0.0, 10.0, 41)
  img = viz.line_plot({"up": (x, x ** 2), "flat": (x, np.full_like(x, 30.0))}, legend=False)
  assert img.shape == viz.PLOT_SIZE + (3,) and img.dtype == np.uint8
  rows, cols = _curve_pixels(img, 0)
  # a rising curve: the lowest painted pixel of each column climbs from left to right
  lowest = np.array([rows[cols == c].max() for c in np.unique(cols)])
  assert (np.diff(lowest) <= 3).all() and lowest[0] - lowest[-1] > 0.8 * img.shape[0] // 2
  assert np.ptp(cols) > 0.8 * img.shape[1]                        # x spans the axes
  flat_rows, flat_cols = _curve_pixels(img, 1)
  assert np.ptp(flat_rows) <= 6 and np.ptp(flat_cols) > 0.8 * img.shape[1]   # one band
  # 30 lies between y(0) = 0 and y(10) = 100, nearer the bottom: its band is between them
  mid = np.median(flat_rows)
  assert lowest[-1] < mid < lowest[0] and mid > (lowest[0] + lowest[-1]) / 2


def test_line_plot_breaks_the_line_at_a_non_finite_value():
  x = np.arange(5.0)
  whole = viz.line_plot({"c": (x, x)}, legend=False)
  gap = viz.line_plot({"c": (x, np.array([0, 1, np.nan, 3, 4.0]))}, legend=False)
  _, cols = _curve_pixels(whole)
  _, gap_cols = _curve_pixels(gap)
  centre = (cols.min() + cols.max()) // 2                  # x = 2
  assert np.sum(np.abs(cols - centre) <= 3) > 0
  assert np.sum(np.abs(gap_cols - centre) <= 3) == 0        # nothing drawn near x = 2
  assert gap_cols.min() == cols.min() and gap_cols.max() == cols.max()   # same axes


def test_line_plot_legend_and_bad_input():
  x = np.arange(3.0)
  with_legend = viz.line_plot({"a": (x, x), "b": (x, -x)}, title="t")
  without = viz.line_plot({"a": (x, x), "b": (x, -x)}, title="t", legend=False)
  for i in (0, 1):   # the legend's swatch sits above the axes' top
    assert _curve_pixels(with_legend, i)[0].min() < _curve_pixels(without, i)[0].min()
  with pytest.raises(ValueError, match="no finite point"):
    viz.line_plot({})
  with pytest.raises(ValueError, match="no finite point"):
    viz.line_plot({"a": (x, np.full(3, np.nan))})
  with pytest.raises(ValueError, match="3 x values and 2 y values"):
    viz.line_plot({"a": (x, x[:2])})
  with pytest.raises(ValueError, match="non-finite x"):
    viz.line_plot({"a": (np.array([0, np.inf, 2]), x)})
  with pytest.raises(ValueError, match="no room"):
    viz.line_plot({"a": (x, x)}, size=(40, 60))
