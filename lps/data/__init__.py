"""Datasets (``datasets``), open-world splits (``splits``) and batched augmentation (``augment``)."""

from __future__ import annotations


def prepare_data(cfg):
    """The images, the open-world split and the test subsample of a run's config (``cfg.data``):
    ``(ImageData, OpenWorldSplit, test indices)``."""
    from lps.data.datasets import load_dataset
    from lps.data.splits import open_world_split, subsample_per_class

    d = cfg.data
    data = load_dataset(d)
    split = open_world_split(data.train_y, data.num_classes, d.seen_class_ratio, d.label_ratio, d.split_seed,
                             d.max_train_per_class)
    test_idx = subsample_per_class(data.test_y, d.max_test_per_class, d.split_seed)
    return data, split, test_idx
