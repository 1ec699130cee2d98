"""Image I/O at the edge of the pipeline: files → uint8 RGB arrays, and back.

Everything past this module works on arrays; this is the one place that touches image files.
Non-RGB inputs are converted: grayscale and palette images to RGB, RGBA composited over white,
16-bit and float images rescaled to 8 bits, and EXIF orientation applied.

Decode budget: a file whose header declares more than ``MAX_PIXELS`` pixels is refused before
any pixel is decoded (`ImageReadError`, naming its size), so a compression bomb (a 389 KB PNG
declaring 20000×20000) or a huge scan is a per-photo skip with its reason, not an
out-of-memory kill. PIL's own bomb guard (its DecompressionBombWarning/Error, 89 and 179 MP)
is met only above this budget and is answered the same way.

Reduced-size decoding: a caller that will shrink the image anyway passes ``min_side`` (the
longer side it needs, e.g. ``--image_size``). A file over the budget is then decoded at an
integer fraction of its size instead of refused: the smallest factor k whose result fits the
budget with its longer side still ≥ ``min_side``. A JPEG is decoded directly at 1/2, 1/4 or
1/8 scale (libjpeg's DCT scaling, ``Image.draft``: the full image never exists in memory);
other formats (PNG, TIFF, ...), which PIL decodes only whole, up to ``MAX_FULL_DECODE_PIXELS``,
then box-reduced (``Image.reduce``). Files within the budget are decoded exactly as before.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
import stat
import sys
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pixels (W·H from the header) above which a file is refused before decoding: 64 MP. A 50 MP
# camera photo passes; a 12000×9000 scan (108 MP) is refused (decoding it, converting it and
# keeping the original for the outputs peaked at 10.9 GB). Downscale such files first.
MAX_PIXELS = 64 * 2**20
# Pixels a non-JPEG file over MAX_PIXELS may declare and still be decoded whole to be reduced
# (``min_side``): 128 MP, 384 MB as RGB (a 12000×9000 scan is 108 MP). Above it, refused.
MAX_FULL_DECODE_PIXELS = 128 * 2**20
# Every image above PIL's bomb-warning threshold is above MAX_PIXELS too and refused here with
# its reason, so PIL's warning (printed apart from that reason) adds nothing: silenced.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
  """A file that exists but cannot be read as an image."""


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
  """Converts any PIL image to an (H, W, 3) uint8 RGB array.

  - "I;16"/"I"/"F" (16-bit or float grayscale): scaled by the mode's range to [0, 255]; NaN or
    Inf pixels raise `ImageReadError` (they would become arbitrary values).
  - "LA"/"RGBA"/"P" with transparency: alpha-composited over white.
  - "L", "1", "CMYK", "YCbCr", "P": converted by PIL.
  """
  mode = img.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    a = np.asarray(img, dtype=np.float64)
    if not np.all(np.isfinite(a)):
      bad = int(np.sum(~np.isfinite(a)))
      raise ImageReadError(f"the image has {bad} NaN/Inf pixel values (of {a.size}); there is "
                           "no meaningful way to show them: fix or mask the file")
    if mode == "F":
      lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
      a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    else:
      a = a / (65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0)
    g = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)
  if mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")
    mode = "RGBA"
  if mode in ("RGBA", "LA", "PA"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, rgba)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS,
               min_side: int = 0) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

  ``min_side`` > 0: a file over ``max_pixels`` is decoded at reduced size (the module
  docstring), its longer side still ≥ ``min_side``; 0 refuses it.

  Raises:
    FileNotFoundError: the path does not exist.
    ImageReadError: the file is not a readable image (corrupt, truncated or another format),
      or its header declares more than ``max_pixels`` pixels and no reduction fits (refused
      before decoding).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no image file at {display_path(path)!r}")
  return _decode(path, display_path(path), max_pixels, min_side)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS,
                 min_side: int = 0) -> np.ndarray:
  """An encoded image file's bytes (JPEG, PNG, ...) as (H, W, 3) uint8 RGB, exactly as
  :func:`read_image` decodes that file (same conversions). ``name`` is used in errors.

  Raises:
    ImageReadError: the bytes are not a readable image, or declare more than ``max_pixels``
      (and no reduction to ``min_side`` fits).
  """
  return _decode(io.BytesIO(data), name, max_pixels, min_side)


def image_size(path: str | os.PathLike, max_pixels: int = MAX_PIXELS,
               min_side: int = 0) -> tuple[int, int]:
  """(H, W) of an image file as :func:`read_image` (same ``max_pixels``, ``min_side``) would
  return it (reduction and EXIF rotation applied), from its header only: no pixel is decoded,
  so budgets can be checked before any allocation.

  Raises:
    FileNotFoundError / ImageReadError: as :func:`read_image` (the pixel budget included).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no image file at {display_path(path)!r}")
  try:
    with _open(path, display_path(path), max_pixels, min_side) as img:
      k = _plan_reduction(img, display_path(path), max_pixels, min_side)
      w, h = (-(-side // k) for side in img.size)
      rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: a transpose
  except ImageReadError:
    raise
  except _READ_ERRORS as e:
    raise ImageReadError(f"cannot read {display_path(path)!r} as an image: {e}") from e
  return (w, h) if rotated else (h, w)


def display_path(path: str | os.PathLike) -> str:
  """A path as text that can always be printed and written as UTF-8: bytes of a non-UTF-8
  file name (kept by Python as surrogate escapes) become U+FFFD."""
  return os.fsencode(path).decode("utf-8", "replace")


_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def _over_budget(name: str, declared: str, max_pixels: int) -> ImageReadError:
  return ImageReadError(f"{name!r} declares {declared}, above the decode budget of "
                        f"{max_pixels / 1e6:.0f} MP (images.MAX_PIXELS; a compression bomb or a "
                        "huge scan): downscale it first")


def _open(file, name: str, max_pixels: int, min_side: int = 0) -> Image.Image:
  """``Image.open`` with the decode budget checked on the header (nothing decoded yet)."""
  try:
    img = Image.open(file)
  except Image.DecompressionBombError as e:  # PIL refuses above 2× its limit, before .size
    found = re.search(r"\((\d+) pixels\)", str(e))
    declared = f"{found[1]} pixels" if found else "too many pixels"
    raise _over_budget(name, declared, max_pixels) from e
  w, h = img.size
  if w * h > max_pixels and _factor(w, h, max_pixels, min_side) is None:
    img.close()
    raise _over_budget(name, f"{w}×{h} px ({w * h / 1e6:.0f} MP)", max_pixels)
  return img


def _factor(w: int, h: int, max_pixels: int, min_side: int) -> int | None:
  """The smallest integer k ≥ 1 with ⌈w/k⌉·⌈h/k⌉ ≤ ``max_pixels`` and the longer reduced side
  ≥ ``min_side`` (None: there is none, or ``min_side`` is 0 and k would be > 1)."""
  k = 1
  while -(-w // k) * -(-h // k) > max_pixels:
    k += 1
  if k > 1 and (min_side <= 0 or max(-(-w // k), -(-h // k)) < min_side):
    return None
  return k


def _plan_reduction(img: Image.Image, name: str, max_pixels: int, min_side: int) -> int:
  """Sets ``img`` up to decode within ``max_pixels`` (`_open` checked that a reduction fits):
  a JPEG's DCT scale (``draft``: ``img.size`` becomes the scaled size); returns the box factor
  left to apply after decoding (1: none)."""
  w, h = img.size
  k = _factor(w, h, max_pixels, min_side)
  if k == 1:
    return 1
  if img.format == "JPEG":
    img.draft(img.mode, (-(-w // k), -(-h // k)))   # scale 1/2, 1/4 or 1/8, size ≥ asked
    return _factor(*img.size, max_pixels, min_side) or 1
  if w * h > MAX_FULL_DECODE_PIXELS:
    raise _over_budget(name, f"{w}×{h} px ({w * h / 1e6:.0f} MP), more than the "
                       f"{MAX_FULL_DECODE_PIXELS / 1e6:.0f} MP a {img.format} may be decoded "
                       "whole to be reduced,", max_pixels)
  return k


# EXIF orientation → the transpose that undoes it (as ImageOps.exif_transpose).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _reduced_rgb(img: Image.Image, k: int) -> np.ndarray:
  """``img`` (decoded) box-reduced by ``k``, oriented by its EXIF and converted to RGB; the
  reduction comes first where PIL can reduce the mode, so only the small image is converted."""
  orientation = img.getexif().get(0x0112, 1)
  if img.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
    small = img.reduce(k)
  else:   # palette, 1-bit, 16-bit: converted whole first
    small = Image.fromarray(to_rgb_uint8(img)).reduce(k)
  if orientation in _ORIENTATION:
    small = small.transpose(_ORIENTATION[orientation])
  return to_rgb_uint8(small)


def _decode(file, name: str, max_pixels: int = MAX_PIXELS, min_side: int = 0) -> np.ndarray:
  try:
    with _open(file, name, max_pixels, min_side) as img:
      k = _plan_reduction(img, name, max_pixels, min_side)
      img.load()
      if k > 1:
        rgb = _reduced_rgb(img, k)
      else:
        rgb = to_rgb_uint8(ImageOps.exif_transpose(img))
  except ImageReadError:
    raise
  except _READ_ERRORS as e:
    raise ImageReadError(f"cannot read {name!r} as an image: {e}") from e
  if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise ImageReadError(f"{name!r} decodes to an empty image of shape {rgb.shape}")
  return rgb


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[pathlib.Path]:
  """Files in ``folder`` (sorted) whose suffix is an image suffix, case-insensitive.

  Files with other suffixes are not listed; files with an image suffix that do not decode are
  listed, and `read_image` reports them.

  Raises:
    FileNotFoundError: ``folder`` is not a directory.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a directory")
  pattern = "**/*" if recursive else "*"
  return sorted(p for p in folder.glob(pattern)
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def output_names(paths: list[pathlib.Path], root: pathlib.Path) -> list[str]:
  """Output stems that keep each file's folder relative to ``root`` (``sub/x.png`` →
  ``sub/x``); within a folder, files sharing a stem keep their suffix (``a.jpg``, ``a.png``).
  Unique by construction: two files never share a relative path. Names are always valid text:
  bytes of a non-UTF-8 file name become U+FFFD (`display_path`), and a name that then repeats
  an earlier one gets ``~2``, ``~3``... (``caf\\xe9.png`` → ``caf\ufffd``)."""
  rel = [pathlib.Path(p).relative_to(root) for p in paths]
  stems = [(r.parent, r.stem) for r in rel]
  names = [display_path(r.parent / (r.stem if stems.count((r.parent, r.stem)) == 1 else r.name))
           for r in rel]
  seen: dict[str, int] = {}
  for i, name in enumerate(names):   # two names differing only in non-UTF-8 bytes
    seen[name] = seen.get(name, 0) + 1
    if seen[name] > 1:
      names[i] = f"{name}~{seen[name]}"
  return names


def collect_images(folder: str | os.PathLike, *, recursive: bool = False,
                   exclude: str | os.PathLike | None = None
                   ) -> tuple[list[pathlib.Path], list[str], dict[str, str]]:
  """The image files of a folder, their unique output names, and the other files skipped.

  Args:
    folder: where the photos are.
    recursive: also look into sub-folders.
    exclude: a folder whose files are never inputs (a run's own output folder inside
      ``folder``).
  Returns:
    ``(paths, names, skipped)``: sorted image paths, `output_names` of them, and
    ``{file: reason}`` for the files with other suffixes and for entries that are no regular
    file (a FIFO, a device such as a link to /dev/zero, a socket, a broken link: never opened,
    so a FIFO cannot block the run) (dot files ignored).
  Raises:
    FileNotFoundError: ``folder`` is not a directory.
  """
  root = pathlib.Path(folder).expanduser().resolve()
  out = None if exclude is None else pathlib.Path(exclude).expanduser().resolve()
  keep = lambda p: out is None or not p.resolve().is_relative_to(out)
  paths = [p for p in list_images(root, recursive=recursive) if keep(p)]
  pattern = "**/*" if recursive else "*"
  skipped = {}
  for p in sorted(root.glob(pattern)):
    if p.name.startswith(".") or p.is_dir() or not keep(p):
      continue
    if not p.is_file():
      skipped[display_path(p)] = f"not a regular file ({_special_kind(p)}); not read"
    elif p.suffix.lower() not in IMAGE_SUFFIXES:
      skipped[display_path(p)] = f"not an image file (suffix not in {', '.join(IMAGE_SUFFIXES)})"
  return paths, output_names(paths, root), skipped


def _special_kind(path: pathlib.Path) -> str:
  """What a directory entry that is no regular file or folder is (from stat: never opened)."""
  try:
    mode = path.stat().st_mode
  except OSError:
    return "a broken link" if path.is_symlink() else "unreadable"
  kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
  return next((name for test, name in kinds if test(mode)), "a special file")


def read_folder(folder: str | os.PathLike, *, recursive: bool = False,
                on_skip: Callable[[str, Exception], None] | None = None,
                hint: str = "") -> list[NamedImage]:
  """Every readable image of a folder, named by `output_names` (the one folder reader).

  Names are unique: ``sub/x.png`` → ``sub/x``, and files sharing a stem in one folder keep
  their suffix (``a.jpg``, ``a.png``), so no image shadows another in a name-keyed source. A
  file that cannot be read as an image is skipped: ``on_skip(path, error)`` is called (by
  default ``skipping PATH: reason`` is printed on stderr). Names are given over all listed
  files, readable or not, so a name never depends on which other files decode.

  Args:
    folder: the folder of images.
    recursive: also read sub-folders.
    on_skip: called for each unreadable file.
    hint: appended to the errors (e.g. which config field names the folder).
  Returns:
    ``NamedImage``s in `list_images` order, (H, W, 3) uint8 RGB.
  Raises:
    FileNotFoundError: ``folder`` is not a directory, or holds no readable image.
  """
  if on_skip is None:
    on_skip = lambda path, e: print(f"skipping {path}: {e}", file=sys.stderr, flush=True)
  tail = f"; {hint}" if hint else ""
  if not pathlib.Path(folder).expanduser().is_dir():
    raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a "
                            f"folder{tail}")
  paths, names, _ = collect_images(folder, recursive=recursive)
  if not paths:
    raise FileNotFoundError(f"no images (suffixes {', '.join(IMAGE_SUFFIXES)}) in "
                            f"{str(folder)!r}{tail}")
  root = pathlib.Path(folder).expanduser().resolve()
  images = []
  for path, name in zip(paths, names):
    try:
      images.append(NamedImage(name, read_image(path)))
    except (ImageReadError, FileNotFoundError) as e:
      on_skip(display_path(pathlib.Path(folder) / path.relative_to(root)), e)  # as named
  if not images:
    raise FileNotFoundError(f"none of the {len(paths)} image files in {str(folder)!r} could be "
                            f"read (each is reported above){tail}")
  return images


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an (H, W) or (H, W, 3|4) uint8 array as PNG."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise TypeError(f"write_png expects uint8, got {array.dtype}")
  Image.fromarray(array).save(path, format="PNG")


@dataclasses.dataclass(frozen=True)
class NamedImage:
  """An image with the name its outputs are written under (file stem or sample name)."""
  name: str
  rgb: np.ndarray  # (H, W, 3) uint8
