"""scale step: the intensity-ratio test of image groups is on in ewald's mode and off with DIALS' settings."""
from pipeline.params import parse_parameters
from pipeline.steps import scale


def _options(*args):
    return scale.scaling_options(parse_parameters(scale.Params, list(args))[0])


def test_ratio_filter_is_on_in_ewald_mode_and_off_with_dials_settings():
    assert _options().intensity_ratio_filter
    assert not _options("dials_end_trimming=True").intensity_ratio_filter
    assert not _options("robust_cutoff=False").intensity_ratio_filter
    assert not _options("intensity_ratio_filter=False").intensity_ratio_filter
