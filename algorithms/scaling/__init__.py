"""Joint scaling of rotation datasets (DIALS physical model), error model, outliers, ΔCC½ filtering."""
from algorithms.scaling.data import (CorrectedIntensities, DatasetScan, ScalingData, cell_outlier_datasets,
                                     excluded_for_scaling, prepare_intensities)
from algorithms.scaling.error_model import ErrorModel, refine_error_model
from algorithms.scaling.model import ModelOptions, PhysicalModel
from algorithms.scaling.scaler import (DatasetModelResult, FilteringCycle, FilteringResult, ScalingOptions,
                                       ScalingResult, scale_and_filter)

__all__ = ["CorrectedIntensities", "DatasetScan", "ScalingData", "cell_outlier_datasets", "excluded_for_scaling",
           "prepare_intensities", "ErrorModel", "refine_error_model", "ModelOptions", "PhysicalModel",
           "ScalingOptions", "ScalingResult", "DatasetModelResult", "FilteringCycle", "FilteringResult",
           "scale_and_filter"]
