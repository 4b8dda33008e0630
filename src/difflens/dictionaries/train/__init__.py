"""Training dictionaries: configs, data sources, the job folder (checkpoints, resume checks, logs), SAE and ITDA loops."""

from .config import ITDATrainConfig, RunConfig, SAETrainConfig
from .data import TrainingData, resolve_data
from .itda import train_itda
from .neurons import neuron_baseline
from .sae import SAEState, train_sae

__all__ = ["ITDATrainConfig", "RunConfig", "SAETrainConfig", "TrainingData", "resolve_data", "train_itda", "neuron_baseline",
           "train_sae", "SAEState"]
