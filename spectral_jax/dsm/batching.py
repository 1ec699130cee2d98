"""Photos to padded batches: bounded prefetch, a few grid buckets, the pipeline, per-photo
results — the loop the segment command, the benchmark and dataset evaluation share.

    for photo, result in dsm.batching.segment_photos(segmenter, sources, image_size=448):
      ...  # write files for `photo` as soon as its batch is done

Photos are decoded by a thread pool at most ``prefetch`` ahead of the batch being run, so peak
memory does not grow with the number of photos. Each photo's patch grid is rounded up to a
multiple of ``bucket_step`` patches (its bucket); a batch holds photos of one bucket, padded at
the bottom/right with a validity mask (``dsm.pipeline``), so a folder of many aspect ratios
compiles one program per bucket, not per size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from spectral_jax import image_ops
from spectral_jax.datasets import images as image_io

IMAGE_SIZE = 448     # px: the longer side photos are resized to (0: their own size)
BUCKET_STEP = 8      # patches: grids are padded up to multiples of this
PREFETCH = 8         # photos decoded ahead of the running batch
# Bytes per patch pair of the dense spectral stage per photo: W, N = D^-½ W D^-½, eigh's
# workspace and the attention logits of one head in float32 (a measured upper bound would be
# tighter; this errs on the side of refusing).
BYTES_PER_PATCH_PAIR = 4 * 4


class PhotoError(ValueError):
  """A photo that cannot be processed (unreadable, too small, too large): skip it, say why."""


@dataclasses.dataclass
class Source:
  """One input photo: a name for its outputs and a loader of (H, W, 3) uint8 RGB."""
  name: str
  origin: str                          # file path or "bundled:<name>"
  load: Callable[[], np.ndarray]
  # (H, W) the photo will have, read without decoding it (a file's header): lets `prepare`
  # refuse a photo over the budgets before any pixel is allocated. None: checked after `load`.
  size: Callable[[], tuple[int, int]] | None = None


@dataclasses.dataclass
class Photo:
  """A decoded, resized photo ready for the backbone (its pixels are dropped after its batch)."""
  source: Source
  size: tuple[int, int]                # (H, W) of the photo
  input_hw: tuple[int, int]            # (H', W') after resizing
  grid: tuple[int, int]                # (h, w) patches
  pixels: np.ndarray | None            # (h·P, w·P, 3) uint8, the resized photo cropped to P
  original: np.ndarray | None = None   # (H, W, 3) uint8, kept only when asked (outputs)
  image_grid: np.ndarray | None = None  # (h, w, 3) colours at the patch grid, for λ > 0
  warnings: list[str] = dataclasses.field(default_factory=list)


def available_memory() -> int:
  """Bytes of memory available to this process (MemAvailable; 8 GiB if unknown)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 8 << 30


def max_patches(memory: int | None = None, batch_size: int = 1) -> int:
  """The most patches per photo whose dense graph fits in ``memory`` (default: available)."""
  memory = available_memory() if memory is None else memory
  return int(np.sqrt(memory / (BYTES_PER_PATCH_PAIR * max(batch_size, 1))))


def resized_shape(size: tuple[int, int], image_size: int) -> tuple[int, int]:
  """(H', W') of a photo of ``size`` (H, W) after ``image_ops.resize_longer_side``, computed
  without resizing (so budgets are checked before the resize allocates)."""
  h, w = size
  if image_size <= 0 or max(h, w) == 0:
    return h, w
  scale = image_size / max(h, w)
  return max(1, round(h * scale)), max(1, round(w * scale))


def check_size(size: tuple[int, int], *, image_size: int, patch_size: int, min_patches: int,
               patch_budget: int) -> tuple[int, int]:
  """The patch grid (h, w) a photo of ``size`` (H, W) will have; raises PhotoError when it is
  refused (see :func:`prepare`). Needs the size only, never the pixels."""
  native = (size[0] // patch_size) * (size[1] // patch_size)
  if native < min_patches:
    raise PhotoError(f"the photo is {size[1]}×{size[0]} px: fewer than {min_patches} patches of "
                     f"{patch_size} px at its own size, too small to segment (upscaling would "
                     "invent the detail)")
  hw = resized_shape(size, image_size)
  grid = (hw[0] // patch_size, hw[1] // patch_size)
  n = grid[0] * grid[1]
  if n < min_patches:
    raise PhotoError(f"after resizing to {hw[1]}×{hw[0]} px the photo has "
                     f"{n} patches; need at least {min_patches}: raise image_size")
  if n > patch_budget:
    fits = int(np.sqrt(patch_budget * size[1] / size[0])) * patch_size if size[0] else 0
    raise PhotoError(f"{grid[0]}×{grid[1]} = {n} patches would need "
                     f"{BYTES_PER_PATCH_PAIR * n * n / 2**30:.1f} GiB for the dense graph, more "
                     f"than the {patch_budget}-patch budget of this machine's free memory: use "
                     f"image_size of at most about {max(fits, patch_size)}")
  return grid


def prepare(source: Source, *, image_size: int, patch_size: int, min_patches: int,
            patch_budget: int, keep_original: bool = False, colour_grid: bool = False,
            check: Callable[[tuple[int, int]], None] | None = None) -> Photo:
  """Decodes and resizes one photo; raises PhotoError (or the reader's error) to skip it.

  Refused: photos with fewer than ``min_patches`` patches at their own size (1×1, 10×10 px:
  upscaling would invent every detail) or after resizing, photos above ``patch_budget``
  patches (the dense graph would not fit in memory: the message says which size would), and
  photos ``check(size)`` refuses (raising ValueError; e.g. the output panel's budget). Every
  budget is checked from the size alone, before the resize allocates, and from the file's
  header before decoding where the source gives ``size``.
  """
  limits = dict(image_size=image_size, patch_size=patch_size, min_patches=min_patches,
                patch_budget=patch_budget)
  if source.size is not None:
    header = tuple(source.size())
    check_size(header, **limits)
    if check is not None:
      check(header)
  rgb = source.load()
  size = rgb.shape[:2]
  grid = check_size(size, **limits)
  if check is not None:
    check(size)
  resized = image_ops.resize_longer_side(rgb, image_size)
  pixels = np.ascontiguousarray(resized[:grid[0] * patch_size, :grid[1] * patch_size])
  colours = None
  if colour_grid:  # the colour graph (λ > 0) reads the uncropped photo at the patch grid
    colours = np.asarray(image_ops.resize_to_grid(resized, grid))
  return Photo(source, size, resized.shape[:2], grid, pixels, rgb if keep_original else None,
               colours)


def bucket(grid: tuple[int, int], step: int = BUCKET_STEP,
           max_side: int | None = None) -> tuple[int, int]:
  """The padded grid of a photo: each side rounded up to a multiple of ``step`` patches, but
  not beyond ``max_side`` (the longer side of every photo resized to one image size, so that
  side is never padded: at 840 px, 60 patches stay 60 rather than 64)."""
  if step <= 1:
    return tuple(grid)
  up = lambda g: -(-g // step) * step
  return tuple(up(g) if max_side is None or g > max_side else min(up(g), max_side)
               for g in grid)


@dataclasses.dataclass
class Batch:
  """Photos of one bucket, padded: images (B, Hb·P, Wb·P, 3) uint8, valid (B, Hb, Wb)."""
  photos: list[Photo]
  images: np.ndarray
  valid: np.ndarray


def pad_batch(photos: list[Photo], grid: tuple[int, int], patch_size: int,
              batch_size: int) -> Batch:
  """Stacks photos into a (batch_size, ...) padded batch; missing rows repeat the last photo."""
  hb, wb = grid
  images = np.zeros((batch_size, hb * patch_size, wb * patch_size, 3), np.uint8)
  valid = np.zeros((batch_size, hb, wb), bool)
  for i in range(batch_size):
    p = photos[min(i, len(photos) - 1)]
    h, w = p.grid
    images[i, :h * patch_size, :w * patch_size] = p.pixels
    valid[i, :h, :w] = True
  return Batch(photos, images, valid)


def batches(photos: Iterable[Photo], *, batch_size: int, patch_size: int,
            bucket_step: int = BUCKET_STEP, max_side: int | None = None) -> Iterator[Batch]:
  """Groups a stream of photos by bucket; yields each bucket's batch as soon as it is full,
  and the partly filled ones at the end (padded to ``batch_size``: one shape per bucket)."""
  open_buckets: dict[tuple[int, int], list[Photo]] = collections.OrderedDict()
  for photo in photos:
    key = bucket(photo.grid, bucket_step, max_side)
    group = open_buckets.setdefault(key, [])
    group.append(photo)
    if len(group) == batch_size:
      yield pad_batch(open_buckets.pop(key), key, patch_size, batch_size)
  for key, group in open_buckets.items():
    yield pad_batch(group, key, patch_size, batch_size)


def prefetched(sources: Iterable[Source], prepare_fn: Callable[[Source], Photo], *,
               prefetch: int = PREFETCH, workers: int | None = None,
               on_error: Callable[[Source, Exception], None] | None = None) -> Iterator[Photo]:
  """``prepare_fn`` over ``sources`` in a thread pool, in order, at most ``prefetch`` ahead.

  Errors of the expected kinds (PhotoError, unreadable files) go to ``on_error`` and the photo
  is skipped; others propagate.
  """
  expected = (PhotoError, image_io.ImageReadError, FileNotFoundError, ValueError)
  workers = workers or min(4, os.cpu_count() or 1)
  pending: collections.deque = collections.deque()
  it = iter(sources)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    def submit():
      for s in it:
        pending.append((s, pool.submit(prepare_fn, s)))
        return True
      return False

    for _ in range(max(prefetch, 1)):
      if not submit():
        break
    while pending:
      source, future = pending.popleft()
      submit()
      try:
        yield future.result()
      except expected as e:
        if on_error is None:
          raise
        on_error(source, e)


def photo_key(seed: int, pixels: np.ndarray) -> jax.Array:
  """A PRNG key per photo from its CONTENT: the seed folded with a hash of the pixels the
  backbone sees (shape included), so a photo's K-means (and every output) depends on its
  pixels and the settings only: not on its file name, folder, order, batch or batch size.

  Args:
    seed: the run's seed.
    pixels: (h·P, w·P, 3) uint8, the resized photo cropped to whole patches (``Photo.pixels``).
  """
  pixels = np.ascontiguousarray(pixels)
  digest = hashlib.blake2b(repr(pixels.shape).encode() + pixels.tobytes(), digest_size=4)
  return jax.random.fold_in(jax.random.key(seed),
                            int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF)


def nonfinite_reason(photo: Photo, res) -> str | None:
  """Why a photo's result cannot be trusted because it holds NaN/Inf, or None.

  Non-finite features (weights, a graph weight overflowing) make NaN eigenpairs, and a NaN
  object map still thresholds into a mask and a box (the whole image, confidently): so any
  NaN/Inf in the eigenvalues, the eigenvectors or the object map on the photo's grid, or in the
  embeddings of its semantic crops, fails the photo.

  Args:
    photo: the ``Photo``; res: its row of the ``DSMResult`` (NumPy, padded grid).
  """
  h, w = photo.grid
  pr = res.patches
  parts = {"eigenvalues": pr.eigenvalues,
           "eigenvectors": np.asarray(pr.eigenvectors).reshape(pr.fiedler.shape + (-1,))[:h, :w],
           "object map": np.asarray(pr.fiedler)[:h, :w]}
  if res.semantic_embeddings is not None:
    parts["semantic crop embeddings"] = np.asarray(res.semantic_embeddings)[
        np.asarray(res.semantic_valid, bool)]
  bad = [name for name, a in parts.items() if not np.all(np.isfinite(a))]
  if not bad:
    return None
  return (f"NaN/Inf in the {', '.join(bad)}: the features or the graph are not finite (check "
          "the weights and the graph settings); no mask or box of this photo can be trusted")


def segment_photos(segmenter, sources: Iterable[Source], *, image_size: int, batch_size: int,
                   seed: int = 0, bucket_step: int = BUCKET_STEP, prefetch: int = PREFETCH,
                   keep_original: bool = False, patch_budget: int | None = None,
                   on_error: Callable[[Source, Exception], None] | None = None,
                   check: Callable[[tuple[int, int]], None] | None = None,
                   ) -> Iterator[tuple[Photo, Any, dict]]:
  """Runs ``segmenter`` (``dsm.make_pipeline``) over photos, streaming.

  Yields ``(photo, result, timing)`` per photo as its batch finishes: ``result`` is the
  photo's row of the batch's ``DSMResult`` as NumPy (patch maps still on the padded grid: crop
  to ``photo.grid``), ``timing`` the batch's seconds per photo. Skipped photos go to
  ``on_error``; ``check(size)`` may refuse a photo by its (H, W) (see :func:`prepare`). A
  photo whose result holds NaN/Inf (:func:`nonfinite_reason`) is never yielded: it goes to
  ``on_error`` as a PhotoError (raised when ``on_error`` is None).
  """
  p = segmenter.patch_size
  budget = patch_budget or max_patches(batch_size=batch_size)
  colour = segmenter.config.image_weight > 0
  if colour:
    bucket_step = 1  # the colour graph is not masked: λ > 0 runs each grid unpadded
  prep = lambda s: prepare(s, image_size=image_size, patch_size=p,
                           min_patches=segmenter.config.min_patches(), patch_budget=budget,
                           keep_original=keep_original, colour_grid=colour, check=check)
  photos = prefetched(sources, prep, prefetch=prefetch, on_error=on_error)
  longest = image_size // p if image_size > 0 else None  # every photo's longer side
  for batch in batches(photos, batch_size=batch_size, patch_size=p, bucket_step=bucket_step,
                       max_side=longest):
    t0 = time.perf_counter()
    rngs = jax.numpy.stack([photo_key(seed, ph.pixels) for ph in batch.photos]
                           + [photo_key(seed, batch.photos[-1].pixels)]
                           * (batch_size - len(batch.photos)))
    grids = None
    if colour:
      grids = np.stack([ph.image_grid for ph in batch.photos]
                       + [batch.photos[-1].image_grid] * (batch_size - len(batch.photos)))
    result = jax.device_get(segmenter(batch.images, batch.valid, rngs, grids))
    per_photo = (time.perf_counter() - t0) / len(batch.photos)
    for i, photo in enumerate(batch.photos):
      photo.pixels = None
      row = jax.tree.map(lambda a, i=i: a[i], result)
      reason = nonfinite_reason(photo, row)
      if reason is None:
        yield photo, row, {"pipeline": per_photo}
      elif on_error is None:
        raise PhotoError(reason)
      else:
        on_error(photo.source, PhotoError(reason))
