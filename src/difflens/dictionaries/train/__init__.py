"""Training dictionaries: configs, data sources, the job folder (checkpoints, resume checks, logs), SAE and ITDA loops."""

from .config import ITDATrainConfig, RunConfig, SAETrainConfig
from .family_configs import (SAE_TRAIN_CONFIGS, BatchTopKTrainConfig, JumpReLUTrainConfig, MatryoshkaTrainConfig,
                             sae_train_config)
from .data import TrainingData, resolve_data
from .itda import train_itda
from .neurons import neuron_baseline
from .sae import SAEState, train_sae

__all__ = ["BatchTopKTrainConfig", "MatryoshkaTrainConfig", "JumpReLUTrainConfig", "SAE_TRAIN_CONFIGS",
           "sae_train_config", "ITDATrainConfig", "RunConfig", "SAETrainConfig", "TrainingData", "resolve_data", "train_itda", "neuron_baseline",
           "train_sae", "SAEState"]
