"""ANN-to-SNN conversion and robust finetuning (Oezdenizci & Legenstein, TMLR 2024, "Adversarially
robust spiking neural networks through conversion").

- ``networks``: VGG- and ResNet-style CNNs of conv / batch norm / ReLU / average pooling / linear layers.
- ``convert``: BN folding, ReLU -> IF populations, layer-by-layer percentile thresholds, global scale.
- ``spiking``: the converted IF network, its gradient paths (surrogate BPTT, BPTR, ANN twin).
- ``robust_training``: PGD-AT, TRADES, MART for the ANN.
- ``finetune``: RFGSM-KL / TRADES finetuning of thresholds and weights through BPTT.
"""

from .convert import SUPPORTED, calibrate_thresholds, convert, fold_batchnorm
from .finetune import FinetuneLoss, RobustFinetuning, parameter_groups
from .networks import ResidualBlock, basic_block, resnet_cnn, vgg_cnn
from .robust_training import METHODS, AdversarialTraining, TrainingLoss
from .spiking import (
    AnalogTwin,
    ConvertedSNN,
    GradientPath,
    IFNeurons,
    RateBackprop,
    gradient_name,
    paper_gradients,
)

__all__ = [
    "SUPPORTED",
    "calibrate_thresholds",
    "convert",
    "fold_batchnorm",
    "RobustFinetuning",
    "FinetuneLoss",
    "parameter_groups",
    "ResidualBlock",
    "basic_block",
    "resnet_cnn",
    "vgg_cnn",
    "METHODS",
    "AdversarialTraining",
    "TrainingLoss",
    "AnalogTwin",
    "ConvertedSNN",
    "GradientPath",
    "IFNeurons",
    "RateBackprop",
    "gradient_name",
    "paper_gradients",
]
