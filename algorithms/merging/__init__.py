"""Merging: ASU mapping with ISYM, weighted merging, merging statistics, French–Wilson."""
from algorithms.merging.french_wilson import FrenchWilsonResult, french_wilson, merge_bijvoet_amplitudes
from algorithms.merging.merge import AnomalousMerged, MergedIntensities, merge_anomalous, merge_intensities
from algorithms.merging.report import format_merging_statistics_table
from algorithms.merging.statistics import BinStatistics, MergingStatistics, merging_statistics
from algorithms.merging.symmetry import AsuMapping, map_to_asu

__all__ = ["AsuMapping", "map_to_asu", "MergedIntensities", "AnomalousMerged", "merge_intensities",
           "merge_anomalous", "BinStatistics", "MergingStatistics", "merging_statistics",
           "format_merging_statistics_table", "FrenchWilsonResult", "french_wilson", "merge_bijvoet_amplitudes"]
