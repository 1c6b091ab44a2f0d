"""lps: open-world semi-supervised learning (LPS and the methods it is compared with)."""

__version__ = "0.1.0"
