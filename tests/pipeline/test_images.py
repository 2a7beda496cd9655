"""Image headers, format models, data-set checks and the lazy image stack (pipeline.images)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import images
from pipeline.errors import InputFileError
from pipeline.images import (
    expand_image_paths,
    import_experiments,
    open_image_stack,
    read_image,
    read_image_file,
    read_image_header,
)
from smv_files import timepix_header, write_smv, write_sweep

TIMEPIX_EXAMPLE = "image_examples/TIMEPIX_SU_516-stdgoni_0001.img"


# ------------------------------------------------------------------------------ the real header


def test_real_timepix_image_models(shared_data):
    path = shared_data / TIMEPIX_EXAMPLE
    header = read_image_header(path)
    assert header.format_class == "FormatSMVTimePix_SU_516x516"
    (experiment,) = import_experiments([path])
    detector, beam, scan = experiment.detector, experiment.beam, experiment.scan
    assert detector.image_size == (516, 516)
    assert detector.pixel_size == (0.055, 0.055)
    assert detector.distance_mm == pytest.approx(531.85, abs=1e-9)
    np.testing.assert_allclose(detector.beam_centre_px(beam.s0), (246.14, 240.35), atol=1e-9)
    np.testing.assert_allclose(detector.origin, (-246.14 * 0.055, 240.35 * 0.055, -531.85), atol=1e-12)
    np.testing.assert_allclose(detector.fast_axis, (1, 0, 0))
    np.testing.assert_allclose(detector.slow_axis, (0, -1, 0))
    assert detector.trusted_range == (-1.0, 65535.0)
    assert (detector.type, detector.thickness, detector.material, detector.mu, detector.gain) == ("SENSOR_PAD", 0.3, "Si", 0.0, 1.0)
    assert detector.mask == []
    assert beam.wavelength == pytest.approx(0.0251)
    np.testing.assert_allclose(beam.direction, (0, 0, 1))
    assert beam.polarization_fraction == 0.5
    axis = np.array([0.7826, -0.6226, 0.0])
    np.testing.assert_allclose(experiment.goniometer.rotation_axis, axis / np.linalg.norm(axis), atol=1e-12)
    assert scan.image_range == (1, 1)
    np.testing.assert_allclose(scan.oscillation, (-65.40, 0.23))
    np.testing.assert_allclose(scan.exposure_times, [0.096288])
    assert scan.epochs[0] == 1182850989.0  # 'Tue Jun 26 09:43:09 2007' UTC


def test_fabio_pixels_equal_plain_numpy_read(shared_data):
    path = shared_data / TIMEPIX_EXAMPLE
    raw = np.frombuffer(path.read_bytes(), "<u2", offset=512).reshape(516, 516)
    via_fabio = np.asarray(images.fabio.open(str(path)).data)
    pixels = read_image_file(path)
    assert pixels.dtype == np.uint16 and via_fabio.dtype == np.uint16
    np.testing.assert_array_equal(via_fabio, raw)
    np.testing.assert_array_equal(pixels, raw)
    assert pixels.max() == 11810  # a real image, not zeros


def test_direct_smv_read_matches_fabio_for_big_endian_non_square_images(tmp_path):
    data = (np.arange(7 * 5).reshape(7, 5) * 1000 % 65536).astype(np.uint16)
    header = {"HEADER_BYTES": 512, "DIM": 2, "BYTE_ORDER": "big_endian", "TYPE": "unsigned_short",
              "SIZE1": 5, "SIZE2": 7, "PIXEL_SIZE": 0.1}
    path = write_smv(tmp_path / "big.img", None, header, shape=(7, 5))
    with open(path, "r+b") as handle:
        handle.seek(512)
        handle.write(data.astype(">u2").tobytes())
    pixels = read_image_file(path)
    assert pixels.dtype == np.uint16 and pixels.flags.writeable
    np.testing.assert_array_equal(pixels, data)
    np.testing.assert_array_equal(pixels, np.asarray(images.fabio.open(str(path)).data))


def test_cbf_without_geometry_header_is_read_but_not_imported(shared_data):
    path = shared_data / "ed_lysozyme_cred/experiment_14/SMV/XCORR.cbf"
    table = read_image_file(path)
    assert table.shape == (516, 516)
    np.testing.assert_array_equal(table[0, :5], [224, 223, 222, 221, 220])
    with pytest.raises(InputFileError, match="XCORR.cbf: CBF without a miniCBF"):
        read_image_header(path)


# -------------------------------------------------------------------------- synthetic headers


def test_timepix_beam_centre_and_cross_mask(tmp_path):
    write_sweep(tmp_path, 2)
    (plain,) = import_experiments([tmp_path])
    np.testing.assert_allclose(plain.detector.beam_centre_px(plain.beam.s0), (228.875, 235.78), atol=1e-9)
    np.testing.assert_allclose(plain.detector.origin, (-12.588125, 12.9679, -2.193), atol=1e-9)
    (masked,) = import_experiments([tmp_path], mask_timepix_cross=True)
    assert masked.detector.mask == [[0, 516, 255, 261], [255, 261, 0, 516]]


def test_adsc_beam_centre_is_mosflm_mm(tmp_path):
    header = timepix_header(BEAMLINE="ALS831", BEAM_CENTER_X="10.5", BEAM_CENTER_Y="20.25", DISTANCE="150",
                            SIZE1="64", SIZE2="48", PIXEL_SIZE="0.1", OSC_RANGE="-0.5")
    path = write_smv(tmp_path / "x_001.img", np.zeros((48, 64)), header)
    assert read_image_header(path).format_class == "FormatSMVADSC"
    (experiment,) = import_experiments([path])
    detector = experiment.detector
    # Mosflm frame: BEAM_CENTER_X runs along slow, BEAM_CENTER_Y along fast
    np.testing.assert_allclose(detector.beam_centre_mm(experiment.beam.s0), (20.25, 10.5), atol=1e-12)
    assert detector.image_size == (64, 48)
    assert detector.distance_mm == pytest.approx(150.0)
    np.testing.assert_allclose(experiment.goniometer.rotation_axis, (-1, 0, 0))  # negative OSC_RANGE
    assert experiment.scan.oscillation == (-56.73, 0.5)


def test_template_glob_folder_and_list_agree_and_sort_numerically(tmp_path):
    paths = write_sweep(tmp_path, 12)
    shuffled = [paths[i] for i in (11, 3, 0, 7, 1, 2, 4, 5, 6, 8, 9, 10)]
    ways = [[tmp_path], [str(tmp_path / "*.img")], [str(tmp_path / "#####.img")], shuffled]
    results = [import_experiments(w)[0] for w in ways]
    for experiment in results:
        assert experiment.scan.image_range == (1, 12)
        assert experiment.imageset["template"] == str(tmp_path / "#####.img")
        assert experiment.scan.oscillation == pytest.approx((-56.73, 0.9149))
    assert images.image_paths(results[3]) == sorted(paths)
    (part,) = import_experiments([tmp_path], image_range=(3, 7))
    assert part.scan.image_range == (3, 7)
    assert part.scan.oscillation[0] == pytest.approx(-56.73 + 2 * 0.9149)


# ---------------------------------------------------------------------------------- bad input


def test_truncated_image(tmp_path):
    paths = write_sweep(tmp_path, 3)
    paths[1].write_bytes(paths[1].read_bytes()[:-100])
    with pytest.raises(InputFileError, match=r"00002\.img: truncated image file \(532924 bytes, the header needs 533024\)"):
        import_experiments([tmp_path])


def test_missing_header_key(tmp_path):
    write_sweep(tmp_path, 2)
    write_smv(tmp_path / "00003.img", np.zeros((516, 516)), timepix_header(OSC_START="-54.9002", WAVELENGTH=None))
    with pytest.raises(InputFileError, match=r"00003\.img: the TIMEPIX_SU SMV header has no WAVELENGTH"):
        import_experiments([tmp_path])


def test_images_of_different_sizes(tmp_path):
    write_sweep(tmp_path, 2)
    write_smv(tmp_path / "00003.img", None, timepix_header(OSC_START="-54.9002", SIZE1="512", SIZE2="512"), shape=(512, 512))
    with pytest.raises(InputFileError, match=r"00003\.img: image of 512×512 pixels but 00001\.img has 516×516"):
        import_experiments([tmp_path])


def test_gap_in_numbering(tmp_path):
    paths = write_sweep(tmp_path, 14)
    paths[12].unlink()
    with pytest.raises(InputFileError) as err:
        import_experiments([tmp_path])
    assert str(err.value) == (
        "images 00012.img to 00014.img: 00013.img is missing; give image_range= to import a contiguous part"
    )
    (experiment,) = import_experiments([tmp_path], image_range=(1, 12))
    assert experiment.scan.image_range == (1, 12)


def test_broken_rotation(tmp_path):
    paths = write_sweep(tmp_path, 4)
    write_smv(paths[2], np.zeros((516, 516)), timepix_header(OSC_START="-50.0"))
    with pytest.raises(InputFileError, match=r"00003\.img: starts at -50\.0° but 00002\.img ends at -54\.9002°"):
        import_experiments([tmp_path])


def test_nonexistent_and_empty_folders(tmp_path):
    with pytest.raises(InputFileError, match="nowhere: no such file or folder"):
        import_experiments([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(InputFileError, match="empty: no image files found there"):
        expand_image_paths([tmp_path / "empty"])
    with pytest.raises(InputFileError, match="not an SMV or CBF image"):
        read_image_header(tmp_path / "empty" / "notes.txt")


# --------------------------------------------------------------------------------- image stack


@pytest.fixture
def count_pixel_reads(monkeypatch):
    calls = []
    real = images.read_image_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(images, "read_image_file", counting)
    return calls


def test_lazy_stack_reads_no_pixels_and_chunks_whole_images(tmp_path, count_pixel_reads):
    paths = write_sweep(tmp_path, 20)
    (experiment,) = import_experiments([tmp_path])
    stack = open_image_stack(experiment, chunk_images=8)
    assert count_pixel_reads == []
    assert stack.dims == ("image", "slow", "fast")
    assert stack.shape == (20, 516, 516) and stack.dtype == np.float32
    assert stack.data.chunks == ((8, 8, 4), (516,), (516,))
    graph = dict(stack.data.__dask_graph__())
    assert len(graph) == 3  # one task per chunk of images, none per image
    np.testing.assert_array_equal(stack["image"], np.arange(1, 21))
    np.testing.assert_allclose(stack["phi_deg"], -56.73 + np.arange(20) * 0.9149)
    middle = stack.sel(image=slice(9, 16)).values  # exactly the second chunk
    assert sorted(count_pixel_reads) == [p.name for p in paths[8:16]]
    for k, image in zip(range(9, 17), middle):
        np.testing.assert_array_equal(image, np.frombuffer(paths[k - 1].read_bytes(), "<u2", offset=512).reshape(516, 516))
    np.testing.assert_array_equal(read_image(experiment, 19), stack.values[19])


def test_zarr_cache_round_trip(tmp_path, count_pixel_reads):
    write_sweep(tmp_path / "images", 10, seed=3)
    (experiment,) = import_experiments([tmp_path / "images"])
    direct = open_image_stack(experiment, chunk_images=4).values
    count_pixel_reads.clear()
    cached = open_image_stack(experiment, chunk_images=4, cache=str(tmp_path / "cache"))
    store = images.default_cache_path(experiment, tmp_path / "cache")
    assert store.is_dir() and len(count_pixel_reads) == 10  # written once
    np.testing.assert_array_equal(cached.values, direct)
    count_pixel_reads.clear()
    again = open_image_stack(experiment, chunk_images=4, cache=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again.values, direct)
    np.testing.assert_array_equal(again["phi_deg"], cached["phi_deg"])
    assert count_pixel_reads == []  # read from the store afterwards
    stored_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert stored_bytes < 0.6 * direct.size * 2  # compressed (Poisson(3) counts)


def test_opening_1296_images_reads_headers_only(tmp_path, count_pixel_reads, monkeypatch):
    """The reference job's size (18 × 72 images) in one folder; pixel blocks are sparse. Every
    byte read from the files is recorded: only the first KiB of each (the header) is read."""
    folder = tmp_path / "big"
    folder.mkdir()
    for k in range(1, 1297):
        header = timepix_header(OSC_START=f"{-56.73 + (k - 1) * 0.9149:.4f}")
        write_smv(folder / f"{k:05d}.img", None, header, shape=(516, 516))

    bytes_read = []

    class RecordingFile:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, *args):
            data = self.handle.read(*args)
            bytes_read.append(len(data))
            return data

    monkeypatch.setattr(images, "open", lambda *a, **k: RecordingFile(open(*a, **k)), raising=False)
    monkeypatch.setattr(images.fabio, "open", lambda *a, **k: pytest.fail("fabio.open called while opening"))
    t0 = time.perf_counter()
    (experiment,) = import_experiments([folder])
    stack = open_image_stack(experiment, chunk_images=16)
    elapsed = time.perf_counter() - t0
    print(f"\nimport + open of 1296 images: {elapsed:.3f} s")
    assert count_pixel_reads == []
    assert len(bytes_read) == 1296 and max(bytes_read) == 1024  # headers only; each file is 533024 bytes
    assert stack.shape == (1296, 516, 516)
    assert len(stack.data.__dask_graph__()) == 81


def test_minicbf_models_and_pixels(tmp_path):
    from fabio.cbfimage import CbfImage

    data = (np.arange(20 * 30).reshape(20, 30) % 7).astype(np.int32)
    for k in (1, 2):
        image = CbfImage(data=data)
        image.header["_array_data.header_convention"] = "PILATUS_1.2"
        image.header["_array_data.header_contents"] = "\n".join([
            "# Pixel_size 172e-6 m x 172e-6 m", "# Silicon sensor, thickness 0.000320 m", "# Exposure_time 0.0990000 s",
            "# Count_cutoff 1048500 counts", "# Wavelength 0.97950 A", "# Detector_distance 0.30000 m",
            "# Beam_xy (12.50, 8.25) pixels", f"# Start_angle {10 + (k - 1) * 0.1:.4f} deg.", "# Angle_increment 0.1000 deg."])
        image.write(str(tmp_path / f"t_{k:04d}.cbf"))
    assert read_image_header(tmp_path / "t_0001.cbf").format_class == "FormatCBFMiniPilatus"
    (experiment,) = import_experiments([tmp_path / "t_####.cbf"])
    detector = experiment.detector
    assert detector.image_size == (30, 20) and detector.pixel_size == pytest.approx((0.172, 0.172))
    assert detector.distance_mm == pytest.approx(300.0)
    np.testing.assert_allclose(detector.beam_centre_px(experiment.beam.s0), (12.5, 8.25), atol=1e-9)
    assert detector.trusted_range == (-1.0, 1048500.0) and detector.thickness == pytest.approx(0.32)
    assert experiment.beam.wavelength == pytest.approx(0.9795)
    assert experiment.scan.image_range == (1, 2)
    np.testing.assert_allclose(experiment.scan.oscillation, (10.0, 0.1))
    stack = open_image_stack(experiment, chunk_images=2, dtype="int32")
    np.testing.assert_array_equal(stack.values, [data, data])


def test_timepix_512_is_recognised_but_refused(tmp_path):
    path = write_smv(tmp_path / "00001.img", None, timepix_header(SIZE1="512", SIZE2="512"), shape=(512, 512))
    assert read_image_header(path).format_class == "FormatSMVTimePix_SU_512x512"
    with pytest.raises(InputFileError, match="00001.img: FormatSMVTimePix_SU_512x512 images are four panels"):
        import_experiments([path])


def test_stack_of_an_expt_from_elsewhere_names_the_missing_file(shared_data):
    from pipeline.formats.expt import read_experiments

    (experiment,) = read_experiments(shared_data / "ed_lysozyme_cred/reference_dials/experiment_14/imported.expt")
    with pytest.raises(InputFileError, match=r"/mnt/e/.*/experiment_14/SMV/data/00001\.img: image file of template .* not found"):
        open_image_stack(experiment)
    experiment.imageset["template"] = str(shared_data / "ed_lysozyme_cred/experiment_14/SMV/data/#####.img")
    stack = open_image_stack(experiment)  # no format_class in a DIALS file: one header tells the dtype
    assert stack.shape == (49, 516, 516)
    np.testing.assert_array_equal(stack[48].values, read_image_file(shared_data / "ed_lysozyme_cred/experiment_14/SMV/data/00049.img"))


@pytest.mark.parametrize("style", ["timepix", "adsc"])
def test_simulator_smv_files_import_to_the_geometry_written(tmp_path, style):
    """Files from pipeline.formats.smv (the simulator's writer) read back to what was written."""
    from pipeline.formats.smv import adsc_header, timepix_su_header, write_smv_image

    make_header = {"timepix": timepix_su_header, "adsc": adsc_header}[style]
    size = (516, 516) if style == "timepix" else (300, 200)
    rng = np.random.default_rng(5)
    frames = []
    for k in range(1, 4):
        header = make_header(image_size=size, pixel_size_mm=0.055, distance_mm=1762.0, osc_start_deg=-56.73 + (k - 1) * 0.9149,
                             osc_range_deg=0.9149, wavelength_A=0.0251, beam_centre_px=(228.875, 135.78),
                             exposure_time_s=2.0, epoch_s=1.6e9 + 2 * k)
        frames.append(rng.poisson(2.0, size=size[::-1]).astype(np.uint16))
        write_smv_image(tmp_path / f"{k:05d}.img", frames[-1], header)
    (experiment,) = import_experiments([tmp_path])
    expected_class = {"timepix": "FormatSMVTimePix_SU_516x516", "adsc": "FormatSMVADSC"}[style]
    assert experiment.imageset["format_class"] == expected_class
    assert experiment.detector.image_size == size
    assert experiment.detector.distance_mm == pytest.approx(1762.0)
    np.testing.assert_allclose(experiment.detector.beam_centre_px(experiment.beam.s0), (228.875, 135.78), atol=1e-6)
    np.testing.assert_allclose(experiment.scan.oscillation, (-56.73, 0.9149))
    np.testing.assert_allclose(experiment.scan.epochs, 1.6e9 + 2 * np.arange(1, 4))
    np.testing.assert_array_equal(open_image_stack(experiment, dtype="uint16").values, frames)
