"""Prediction: fill the hardware class × layer signature matrix by collaborative filtering.

- :class:`CostPredictor` fits biased matrix factorisation (ALS, rank chosen by validation)
  on log-latency, and on log-energy where some class measured energy.
- :func:`predict_model` gives every segment of a model its cost on one class, measured or
  predicted; :func:`evaluate` compares CF with the Neurosurgeon-style baseline
  (``splitdnn.predict.baseline``) on hidden entries.
"""

from splitdnn.predict.cf import FactorModel, Observations, choose_and_fit, fit_factorisation
from splitdnn.predict.predictor import CostPredictor, evaluate, predict_model

__all__ = [
    "CostPredictor",
    "FactorModel",
    "Observations",
    "choose_and_fit",
    "evaluate",
    "fit_factorisation",
    "predict_model",
]
