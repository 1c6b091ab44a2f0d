"""lps: open-world semi-supervised learning (LPS and the methods it is compared with)."""

from lps import _compat  # noqa: F401  (must run before torchvision is imported)

__version__ = "0.1.0"
