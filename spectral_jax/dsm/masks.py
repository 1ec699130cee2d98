"""DSM single-object segmentation: patch maps brought to the photo's own pixels (SPEC §4).

Output steps on the host (NumPy in, NumPy out; jax arrays work too): the patch-level results of
the jitted pipeline are upsampled per photo, at the photo's own size, as files are written.
"""

from __future__ import annotations

import numpy as np

UPSAMPLE_METHODS = ("nearest", "bilinear")


def _source_taps(out_size: int, in_size: int, cells: int, patch_size: int, method: str):
  """Per output pixel: two patch indices and weights along one axis.

  Output pixel u (centre u + ½) lies at ``(u + ½)·in_size/out_size`` in the backbone's input
  frame, i.e. in patch cell ``floor(that / P)`` (nearest), or at grid coordinate
  ``that / P − ½`` between patch centres (bilinear; clamped at the edges). Pixels beyond the
  cropped strip take the last patch.
  """
  pos = (np.arange(out_size) + 0.5) * (in_size / out_size) / patch_size
  if method == "nearest":
    i0 = np.clip(np.floor(pos), 0, cells - 1).astype(np.int32)
    return i0, i0, np.ones(out_size, np.float32)
  g = np.clip(pos - 0.5, 0.0, cells - 1)
  i0 = np.floor(g).astype(np.int32)
  i1 = np.minimum(i0 + 1, cells - 1)
  return i0, i1, (1.0 - (g - i0)).astype(np.float32)


def upsample_patch_map(values, *, patch_size: int, input_hw: tuple[int, int],
                       output_hw: tuple[int, int], method: str = "nearest") -> np.ndarray:
  """Brings a patch-grid map to an image's own pixels.

  The backbone saw the photo resized to ``input_hw`` and cropped to (h·P, w·P); each output
  pixel is mapped into that frame and reads its patch ("nearest": the patch mask as DSM
  upsamples it, any dtype) or interpolates between patch centres ("bilinear", floats: the
  smoother option, e.g. for y₁ before thresholding).

  Args:
    values: (..., h, w) patch values (the image's real patches only).
    patch_size: P.
    input_hw: (H', W') the backbone's input size before the crop.
    output_hw: (H, W) the photo's size.
    method: "nearest" or "bilinear".
  Returns:
    (..., H, W) NumPy, values' dtype (nearest) or float32 (bilinear).
  """
  if method not in UPSAMPLE_METHODS:
    raise ValueError(f"method must be one of {UPSAMPLE_METHODS}; got {method!r}")
  values = np.asarray(values)
  h, w = values.shape[-2:]
  y0, y1, wy = _source_taps(int(output_hw[0]), int(input_hw[0]), h, patch_size, method)
  x0, x1, wx = _source_taps(int(output_hw[1]), int(input_hw[1]), w, patch_size, method)
  if method == "nearest":
    return values[..., y0[:, None], x0[None, :]]
  v = values.astype(np.float32)
  wy, wx = wy[:, None], wx[None, :]
  top = wx * v[..., y0[:, None], x0[None, :]] + (1 - wx) * v[..., y0[:, None], x1[None, :]]
  bot = wx * v[..., y1[:, None], x0[None, :]] + (1 - wx) * v[..., y1[:, None], x1[None, :]]
  return wy * top + (1 - wy) * bot


def object_mask(fiedler, *, patch_size: int, input_hw: tuple[int, int],
                output_hw: tuple[int, int], upsample: str = "nearest") -> np.ndarray:
  """Single-object mask at the photo's resolution (SPEC §4).

  "nearest" (reference): the patch mask ``y₁ > 0`` upsampled. "bilinear": y₁ interpolated
  between patch centres, then thresholded at 0, which follows the zero crossing between
  patches instead of the patch staircase.

  Args:
    fiedler: (..., h, w) oriented y₁ of the image's real patches.
    patch_size, input_hw, output_hw: see :func:`upsample_patch_map`.
    upsample: "nearest" or "bilinear".
  Returns:
    (..., H, W) bool; all True when nothing is positive (as ``foreground_patches``).
  """
  if upsample == "nearest":
    return upsample_patch_map(_positive_or_all(fiedler), patch_size=patch_size,
                              input_hw=input_hw, output_hw=output_hw)
  field = upsample_patch_map(fiedler, patch_size=patch_size, input_hw=input_hw,
                             output_hw=output_hw, method=upsample)
  return _positive_or_all(field)


def _positive_or_all(y) -> np.ndarray:
  """``y > 0``, or everything where nothing is positive (``localisation.foreground_patches``
  on the host)."""
  m = np.asarray(y) > 0
  return m | ~np.any(m, axis=(-2, -1), keepdims=True)
