"""Deprecated alias of `spectral_jax.datasets.images` (moved there; this path is kept for one release).

``spectral_jax.data.images`` *is* that module (the same object), so patches and isinstance checks
made through either path agree.
"""

import sys

from spectral_jax.datasets import images as _moved

sys.modules[__name__] = _moved
