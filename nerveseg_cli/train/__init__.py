"""``nerveseg train``: the training engine (see engine.py for the loop)."""

from nerveseg_cli.train.engine import EpochRecord, Reporter, TrainOptions, TrainResult, train

__all__ = ["EpochRecord", "Reporter", "TrainOptions", "TrainResult", "train"]
