"""Experimental geometry in the DIALS/dxtbx conventions: models, frames and prediction."""
from algorithms.geometry.models import Beam, Crystal, Detector, Goniometer, Scan, Experiment

__all__ = ["Beam", "Crystal", "Detector", "Goniometer", "Scan", "Experiment"]
