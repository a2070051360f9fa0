"""The NanobeamNN model: network, training on the simulator, ensembles, model files and the inference engine.

``Predictor.load()`` loads the shipped default ensemble; ``nanopilot train --config FILE`` trains new models.
"""

from .files import ModelFile, load_model, save_model
from .network import Architecture, LabelScaler, NanobeamNN, StackedEnsemble, count_parameters, multiply_adds
from .predictor import DEFAULT_MODEL, THICKNESS_MODEL, Predictor, shipped_model_path
from .residual import fit_background, residual_statistic
from .train_config import TrainConfig
from .training import TrainResult, train, train_model

__all__ = [
    "DEFAULT_MODEL", "THICKNESS_MODEL", "Architecture", "LabelScaler", "ModelFile", "NanobeamNN", "Predictor",
    "StackedEnsemble", "TrainConfig", "TrainResult", "count_parameters", "fit_background", "load_model",
    "multiply_adds", "residual_statistic", "save_model", "shipped_model_path", "train", "train_model",
]
