"""Joint scaling of rotation datasets (DIALS physical model), error model, outliers, ΔCC½ filtering."""
from algorithms.scaling.data import (CorrectedIntensities, DatasetScan, ScalingData, cell_outlier_datasets,
                                     excluded_for_scaling, prepare_intensities)
from algorithms.scaling.error_model import ErrorModel, refine_error_model
from algorithms.scaling.from_reflections import scaling_data_from_reflections
from algorithms.scaling.model import ModelOptions, PhysicalModel
from algorithms.scaling.results import annotate_reflections, scaling_model_dict
from algorithms.scaling.scaler import (DatasetModelResult, FilteringCycle, FilteringResult, ScalingOptions,
                                       ScalingResult, scale_and_filter)

__all__ = ["CorrectedIntensities", "DatasetScan", "ScalingData", "cell_outlier_datasets", "excluded_for_scaling",
           "prepare_intensities", "ErrorModel", "refine_error_model", "ModelOptions", "PhysicalModel",
           "ScalingOptions", "ScalingResult", "DatasetModelResult", "FilteringCycle", "FilteringResult",
           "scale_and_filter", "scaling_data_from_reflections", "annotate_reflections", "scaling_model_dict"]
