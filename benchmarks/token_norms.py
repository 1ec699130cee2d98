"""High-norm "artifact" tokens of the backbone on the bundled photos (issue 21).

Darcet et al. ("Vision Transformers Need Registers", ICLR 2024) report that DINOv2 without
registers produces a few background tokens whose norm is several times the others', and that
they break LOST-style object discovery. This prints, per photo and per block, the largest patch
token norm over the median one, and the tokens above ``--factor`` × the median in the last
block (the DSM graph's keys come from it), so a reader sees whether they enter the graph.

  PYTHONPATH=. python benchmarks/token_norms.py [--image_size 448] [--factor 4]
"""

import argparse

import jax.numpy as jnp
import numpy as np

from spectral_jax import backbones, image_ops
from spectral_jax.datasets import samples


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_size", type=int, default=448, help="longer side, pixels")
  parser.add_argument("--factor", type=float, default=4.0, help="high-norm threshold × median")
  parser.add_argument("--backbone", default="dinov2_vits14")
  args = parser.parse_args()
  backbone = backbones.load_pretrained(args.backbone)
  p = backbone.config.patch_size
  print(f"{args.backbone} ({backbone.config.weights_note[:60]}...), longer side "
        f"{args.image_size} px; max/median patch-token norm per block, and last-block tokens "
        f"> {args.factor:g}× the median:")
  worst = 0.0
  for name, rgb in samples.bundled_photos().items():
    resized = image_ops.resize_longer_side(rgb, args.image_size)   # as `segment` does
    size = (resized.shape[0] // p * p, resized.shape[1] // p * p)   # DSM's crop to patches
    image = resized[None, :size[0], :size[1]].astype(np.float32) / 255.0
    feats = backbones.extract_features(backbone, jnp.asarray(image))
    norms = np.linalg.norm(np.asarray(feats.blocks[:, 0], np.float32), axis=-1)   # (L, N)
    ratios = norms.max(1) / np.median(norms, 1)
    last = norms[-1]
    high = np.flatnonzero(last > args.factor * np.median(last))
    worst = max(worst, float(ratios.max()))
    print(f"  {name:9s} grid {size[0] // p}x{size[1] // p}: "
          + " ".join(f"{r:.2f}" for r in ratios) + f"; high-norm tokens: {len(high)}")
  print(f"largest max/median ratio over all photos and blocks: {worst:.2f} "
        f"({'none' if worst <= args.factor else 'some'} above {args.factor:g}×)")


if __name__ == "__main__":
  main()
