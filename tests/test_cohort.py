"""Cohorts on dask.distributed: identical CSVs to the serial run, --resume, a killed worker,
an unreachable scheduler and a failing disk (napari_ddrnet.cohort, the CLI's count)."""

from __future__ import annotations

import errno
import os
import signal

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_ddrnet import cli, cohort
from napari_ddrnet.cohort import CountSettings, count_cohort
from napari_ddrnet.synthetic import synthetic_smear

distributed = pytest.importorskip("distributed")

TILE = 256  # small tiles: the 480x1280 slide becomes 10 tasks
# One view per crop (no TTA) and few small images keep the file fast on 2 shared cores.
SETTINGS = CountSettings(device="cpu", tile_size=TILE, tta=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two fields (PNG, TIFF) and a two-level pyramidal OME-TIFF slide, in CLI order."""
    d = tmp_path_factory.mktemp("cohort_in")
    paths = []
    for i in range(2):
        image, _ = synthetic_smear(pixel_size_um=0.1, seed=10 + i)
        p = d / (f"field{i}.png" if i != 1 else f"field{i}.tif")
        if p.suffix == ".png":
            Image.fromarray(image).save(p)
        else:
            tifffile.imwrite(p, image)
        paths.append(p)
    slide = np.concatenate([synthetic_smear(pixel_size_um=0.1, seed=20 + k)[0]
                            for k in range(2)], 1)
    p = d / "slide.ome.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(slide, tile=(256, 256), photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1})
        tw.write(slide[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    paths.append(p)
    return [str(p) for p in paths]


def _count(inputs, out, *extra) -> int:
    return cli.main(["count", *inputs, "--cells-csv", str(out / "cells.csv"),
                     "--counts-csv", str(out / "counts.csv"), "--device", "cpu",
                     "--tile-size", str(TILE), "--no-tta", "--quiet", *extra])


def _bytes(out):
    return (out / "cells.csv").read_bytes(), (out / "counts.csv").read_bytes()


@pytest.fixture(scope="module")
def serial(inputs, tmp_path_factory):
    """The serial run's CSV bytes (no cluster)."""
    out = tmp_path_factory.mktemp("serial")
    assert _count(inputs, out) == 0
    return _bytes(out)


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from napari_ddrnet.cohort import local_cluster

    with local_cluster(2, dashboard_address=":0", silence_logs=50) as lc, Client(lc) as c:
        yield c


def test_serial_slide_rows_match_analyze(inputs, serial):
    from io import BytesIO

    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.image_io import read_image
    from napari_ddrnet.pipeline import analyze

    cells = pd.read_csv(BytesIO(serial[0]))
    slide = cells[cells["image"] == inputs[-1]]
    levels, px = read_image(inputs[-1])
    assert px == pytest.approx(0.1)
    clf = Classifier(device="cpu", tta=False)
    ref = analyze(levels[0], None, clf, pixel_size_metadata=px, return_labels=False,
                  tile_size=TILE).cells
    assert len(slide) == len(ref) >= 6  # a tiled slide: cells from several tiles
    assert slide["cell_id"].tolist() == ref["cell_id"].tolist() == list(range(1, len(ref) + 1))
    np.testing.assert_allclose(slide["centroid_row"], ref["centroid_row"], rtol=1e-5)
    np.testing.assert_allclose(slide["prob_neutrophil"], ref["prob_neutrophil"], rtol=1e-5)
    assert cells["image"].drop_duplicates().tolist() == inputs  # input order


def test_cli_workers_identical_to_serial(inputs, serial, tmp_path):
    assert _count(inputs, tmp_path, "--workers", "2") == 0
    assert _bytes(tmp_path) == serial


def test_client_entry_identical_and_killed_worker_loses_no_rows(inputs, serial, client,
                                                                tmp_path):
    pids = client.run(os.getpid)
    killed = []

    def progress(done, total):
        # Kill a worker that is busy right now: its tasks must be redone elsewhere.
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    report = count_cohort(inputs, tmp_path / "cells.csv", tmp_path / "counts.csv",
                          client=client, settings=SETTINGS,
                          progress=progress)
    assert killed, "no worker was busy to kill"
    assert report.failed == [] and report.analysed == len(inputs)
    assert _bytes(tmp_path) == serial
    # One classifier per worker process, however many tasks it ran (the restarted one may
    # have run none).
    assert set(client.run(lambda: len(cohort._CLASSIFIERS)).values()) <= {0, 1}
    cohort.wait_for_workers(client, 2)  # the nanny restarts it for the next test


def test_resume_after_killed_run(inputs, serial, tmp_path):
    class Killed(Exception):
        pass

    def die_after_two(done, total):
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        count_cohort(inputs, tmp_path / "cells.csv", tmp_path / "counts.csv",
                     settings=SETTINGS,
                     progress=die_after_two)
    assert not (tmp_path / "cells.csv").exists()
    assert len(list((tmp_path / "cells.csv.parts").glob("*.done"))) == 2
    assert _count(inputs, tmp_path, "--resume") == 0
    assert _bytes(tmp_path) == serial
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert not cells.duplicated(["image", "cell_id"]).any()
    # Resuming a complete run only re-assembles: same bytes, nothing analysed.
    report = count_cohort(inputs, tmp_path / "cells.csv", tmp_path / "counts.csv",
                          settings=SETTINGS, resume=True)
    assert (report.resumed, report.analysed) == (len(inputs), 0)
    assert _bytes(tmp_path) == serial


def test_resume_refuses_other_settings(inputs, tmp_path, capsys):
    count_cohort(inputs[:1], tmp_path / "cells.csv", tmp_path / "counts.csv",
                 settings=SETTINGS)
    assert _count(inputs[:1], tmp_path, "--resume", "--min-confidence", "0.9") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "Traceback" not in err
    assert "min_confidence 0.5 -> 0.9" in err  # says which setting changed


def test_resume_refuses_parts_of_another_shipped_default(inputs, tmp_path, capsys,
                                                          monkeypatch):
    """Parts made while another model was the shipped default (``weights`` None both times)
    must not join this run: the fingerprint names the model the weights resolve to."""
    from napari_ddrnet import weights

    previous = weights.WEIGHTS_DIR / "ddrnet_wbc8_v5.safetensors"
    with monkeypatch.context() as m:
        m.setattr(weights, "DEFAULT_WEIGHTS", previous)
        count_cohort(inputs[:1], tmp_path / "cells.csv", tmp_path / "counts.csv",
                     settings=SETTINGS)
    assert _count(inputs[:1], tmp_path, "--resume") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "ddrnet_wbc8_v5" in err
    assert weights.DEFAULT_WEIGHTS.stem in err and "Traceback" not in err


def test_resume_refuses_parts_of_another_version(inputs, tmp_path, capsys):
    """Parts written before CELLS.csv gained a column would be assembled misaligned."""
    import json

    count_cohort(inputs[:1], tmp_path / "cells.csv", tmp_path / "counts.csv",
                 settings=SETTINGS)
    manifest = tmp_path / "cells.csv.parts" / "cohort.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "version": cohort.PARTS_VERSION - 1}))
    assert _count(inputs[:1], tmp_path, "--resume") == 2
    err = capsys.readouterr().err
    assert "another version" in err and "Traceback" not in err


def test_resume_says_when_the_check_leaves_parts_out(inputs, tmp_path, capsys):
    """A finished image whose recorded shift-check sums have another length (written with
    another model's or card's check) is left out of the run's check, and the user is told how
    many cells that is, instead of a silently smaller verdict."""
    import base64
    import json

    count_cohort(inputs, tmp_path / "cells.csv", tmp_path / "counts.csv", settings=SETTINGS)
    done = tmp_path / "cells.csv.parts"
    markers = {p: json.loads(p.read_text()) for p in done.glob("*.done")}
    last = next(p for p, m in markers.items() if "slide" in m["image"] and m.get("shift_n"))
    m = markers[last]
    sums = np.frombuffer(base64.b64decode(m["shift_sum"]), "<f8")
    m["shift_sum"] = base64.b64encode(np.concatenate([sums, sums]).astype("<f8").tobytes()
                                      ).decode()
    last.write_text(json.dumps(m))
    capsys.readouterr()
    assert _count(inputs, tmp_path, "--resume") == 0
    err = capsys.readouterr().err
    assert f"left out {m['shift_n']} cells" in err and "Traceback" not in err


def test_full_disk_keeps_what_was_written(inputs, serial, tmp_path, monkeypatch, capsys):
    out = tmp_path
    (out / "cells.csv").write_bytes(b"earlier run\n")
    (out / "counts.csv").write_bytes(b"earlier run\n")
    real = cohort.write_csv_atomic
    calls = []

    def full_disk(df, path):
        calls.append(path)
        if len(calls) == 3:  # the second image's cells part
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(df, path)

    monkeypatch.setattr(cohort, "write_csv_atomic", full_disk)
    assert _count(inputs, out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert (out / "cells.csv").read_bytes() == b"earlier run\n"  # not replaced
    assert len(list((out / "cells.csv.parts").glob("*.done"))) == 1
    monkeypatch.setattr(cohort, "write_csv_atomic", real)
    assert _count(inputs, out, "--resume") == 0
    assert _bytes(out) == serial


def test_unreachable_scheduler_exits_2(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cohort, "CONNECT_TIMEOUT_S", 1.0)
    assert _count(inputs[:1], tmp_path, "--scheduler", "tcp://127.0.0.1:9") == 2
    err = capsys.readouterr().err
    assert "cannot connect to tcp://127.0.0.1:9" in err and "Traceback" not in err
    assert not (tmp_path / "cells.csv").exists()


def test_usage_errors(inputs, tmp_path, capsys):
    assert _count(inputs[:1], tmp_path, "--workers", "0") == 2
    assert _count(inputs[:1], tmp_path, "--workers", "2", "--scheduler", "tcp://x:1") == 2
    assert _count(inputs[:1], tmp_path, "--single-cell", "--workers", "2") == 2
    assert "--single-cell" in capsys.readouterr().err


def test_corrupt_tile_fails_only_that_slide(inputs, serial, tmp_path, monkeypatch):
    from napari_ddrnet import pipeline

    real = pipeline.analyze_tile

    def broken(image, plan, index, classifier, **kwargs):
        if index == 3:
            raise OSError("corrupt tile")
        return real(image, plan, index, classifier, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_tile", broken)
    warnings = []
    report = count_cohort(inputs, tmp_path / "cells.csv", tmp_path / "counts.csv",
                          settings=SETTINGS, warn=warnings.append)
    assert report.failed == [(inputs[-1], "tile 3: corrupt tile")]
    assert any("skipped" in w and "corrupt tile" in w for w in warnings)
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert cells["image"].drop_duplicates().tolist() == inputs[:-1]  # no partial slide


def _profile_samples(dask_worker) -> int:
    """Stack samples the worker's statistical profiler has taken (0 when it is off)."""
    return dask_worker.profile_recent["count"] + sum(
        p["count"] for _, p in dask_worker.profile_history)


def test_local_cluster_workers_do_not_profile():
    # The profiler keeps an hour of samples: a worker's memory would grow with the run.
    import time as _time

    from distributed import Client

    from napari_ddrnet.cohort import local_cluster

    # A cluster of its own: on the module's cluster, whose worker the test above killed, the
    # nanny of distributed 2023.1 (the minimum) restarted this kill's worker into one the
    # client could not reach (min-deps CI, 2026-12-08: three runs of three; alone it passed).
    with local_cluster(2, dashboard_address=":0", silence_logs=50) as lc, Client(lc) as client:
        client.gather(client.map(_time.sleep, [0.3, 0.3], pure=False))
        assert list(client.run(_profile_samples).values()) == [0, 0]
        # A worker that crashes is started again by its nanny, with the same setting.
        before = client.run(os.getpid)
        victim = sorted(before)[0]
        os.kill(before[victim], signal.SIGKILL)
        # The nanny restarts it within seconds on an idle machine; under load (the min-deps
        # CI run on 2 shared cores, 2026-12-07) once just over 60 s: the limit only catches
        # "never".
        deadline = _time.monotonic() + 180
        while victim in client.nthreads() or len(client.nthreads()) < 2:  # a new address
            assert _time.monotonic() < deadline, "the killed worker was not restarted"
            _time.sleep(0.2)
        client.gather(client.map(_time.sleep, [0.3, 0.3], pure=False))
        assert list(client.run(_profile_samples).values()) == [0, 0]


def test_a_profiling_cluster_gets_a_warning(inputs, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as lc, Client(lc) as c:  # dask's defaults: profiler on
        warnings = []
        report = count_cohort(inputs[:1], tmp_path / "cells.csv", tmp_path / "counts.csv",
                              client=c, settings=SETTINGS, warn=warnings.append)
    assert report.analysed == 1
    assert any("profiler" in w and "PROFILE__ENABLED=False" in w for w in warnings)


def test_our_cluster_gets_no_profiler_warning(inputs, client, tmp_path):
    warnings = []
    count_cohort(inputs[:1], tmp_path / "cells.csv", tmp_path / "counts.csv", client=client,
                 settings=SETTINGS, warn=warnings.append)
    assert not any("profiler" in w for w in warnings)


def test_one_model_named_three_ways_is_one_model_for_resume(tmp_path):
    """--resume compares the model, not how it was named (default, name, path); manifests of
    the ninth session, which also recorded the name as given, still resume."""
    import json

    from napari_ddrnet.weights import DEFAULT_WEIGHTS, WEIGHTS_DIR

    v5 = CountSettings(weights="ddrnet_wbc8_v5").fingerprint()
    assert v5 == CountSettings(weights=str(WEIGHTS_DIR / "ddrnet_wbc8_v5.safetensors")
                               ).fingerprint()
    assert CountSettings().fingerprint() == CountSettings(weights=DEFAULT_WEIGHTS.stem
                                                          ).fingerprint()
    assert CountSettings().fingerprint() != v5
    folder = tmp_path / "parts"
    cohort._Parts(folder, CountSettings(), resume=False)
    manifest = folder / "cohort.json"
    old = json.loads(manifest.read_text())
    old["settings"]["weights"] = None
    manifest.write_text(json.dumps(old))
    cohort._Parts(folder, CountSettings(weights=DEFAULT_WEIGHTS.stem), resume=True)
    with pytest.raises(cohort.CohortError, match="ddrnet_wbc8_v5"):
        cohort._Parts(folder, CountSettings(weights="ddrnet_wbc8_v5"), resume=True)


def test_a_worker_resolving_another_model_fails_its_images(inputs):
    """A worker whose installation resolves the weights to another model than the client's (an
    older package with another default, another file under an adapted model's name) must not
    count with it: its images fail with a message that says what to install; images and
    tiles of matching workers are unaffected, and --resume sees one model either way."""
    from dataclasses import replace

    from napari_ddrnet.weights import DEFAULT_WEIGHTS

    here = cohort._model_identity(None)
    assert here.startswith(f"{DEFAULT_WEIGHTS.stem} ")
    other = replace(SETTINGS, expect_model="ddrnet_wbc8_v5 000000000000")
    failed = cohort.image_task(inputs[0], other)
    assert isinstance(failed, cohort._Failed)
    assert "ddrnet_wbc8_v5 000000000000" in failed.reason and here in failed.reason
    assert "same napari-ddrnet version" in failed.reason
    ok = cohort.image_task(inputs[0], replace(SETTINGS, expect_model=here))
    assert not isinstance(ok, cohort._Failed)
    assert other.fingerprint() == SETTINGS.fingerprint()
