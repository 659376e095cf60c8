"""Constituent features, jet networks and the classifier and distillation LightningModules."""

from softsymlit.models.classifier import JetClassifier, LossTerms, weighted_cross_entropy
from softsymlit.models.distillation import (
    DistillationModule,
    DistillationTerms,
    distillation_loss,
    load_teacher,
    prediction_agreement,
)
from softsymlit.models.features import FEATURE_NAMES, ConstituentFeatures, jet_four_momentum
from softsymlit.models.metrics import BackgroundRejection
from softsymlit.models.networks import ParticleFlowNetwork, ParticleTransformer, count_parameters

__all__ = [
    "FEATURE_NAMES",
    "BackgroundRejection",
    "ConstituentFeatures",
    "DistillationModule",
    "DistillationTerms",
    "JetClassifier",
    "LossTerms",
    "ParticleFlowNetwork",
    "ParticleTransformer",
    "count_parameters",
    "distillation_loss",
    "jet_four_momentum",
    "load_teacher",
    "prediction_agreement",
    "weighted_cross_entropy",
]
