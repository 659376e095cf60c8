"""Constituent features, jet networks and the classifier LightningModule."""

from softsymlit.models.classifier import JetClassifier, LossTerms, weighted_cross_entropy
from softsymlit.models.features import FEATURE_NAMES, ConstituentFeatures, jet_four_momentum
from softsymlit.models.metrics import BackgroundRejection
from softsymlit.models.networks import ParticleFlowNetwork, ParticleTransformer, count_parameters

__all__ = [
    "FEATURE_NAMES",
    "BackgroundRejection",
    "ConstituentFeatures",
    "JetClassifier",
    "LossTerms",
    "ParticleFlowNetwork",
    "ParticleTransformer",
    "count_parameters",
    "jet_four_momentum",
    "weighted_cross_entropy",
]
