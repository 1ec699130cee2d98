"""DSM on one NumPy array: photo in, mask, boxes and segments at the photo's size out.

``dsm.segment`` runs exactly what ``python -m experiments.segment`` runs for one photo (the
offline DINOv2 ViT-S/14 at 448 px, ``dsm.PipelineConfig()``); here on an array you made
yourself, then again with the reference DSM rule, and the two results compared. Writes
``dsm_one_array.png`` (the command's overlay picture) to $EXAMPLE_OUT or the current folder.

  python examples/dsm_one_array.py
"""

import os
import pathlib

import numpy as np
from PIL import Image

from spectral_jax import dsm, viz
from spectral_jax.datasets import samples


def main() -> None:
  rgb = samples.skimage_photo("chelsea")                   # any (H, W, 3) uint8 array
  result = dsm.segment(rgb)                                # the command's defaults
  h, w = rgb.shape[:2]
  assert result.mask.shape == result.segments.shape == (h, w)
  print(f"default ({dsm.PipelineConfig().discovery}): best box {result.box.tolist()}, "
        f"{len(result.boxes)} boxes, mask {100 * result.mask.mean():.0f}% of the photo, "
        f"λ₁ = {result.eigenvalues[1]:.3f}, warnings {list(result.warnings)}")
  # The paper's rule, one field away; the same pixels give the same answer every time.
  reference = dsm.segment(rgb, config=dsm.PipelineConfig(discovery="dsm"))
  again = dsm.segment(rgb.copy(), config=dsm.PipelineConfig(discovery="dsm"))
  assert np.array_equal(reference.mask, again.mask)
  agree = (reference.mask == result.mask).mean()
  print(f"reference DSM: best box {reference.box.tolist()}, mask "
        f"{100 * reference.mask.mean():.0f}%; the two masks agree on {100 * agree:.0f}% of pixels")
  # as the command draws it: "box" in yellow, the other boxes of "boxes" in blue
  picture = viz.overlay(rgb, result.mask, result.segments, result.overlay_boxes())
  out = pathlib.Path(os.environ.get("EXAMPLE_OUT", ".")) / "dsm_one_array.png"
  Image.fromarray(picture).save(out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
