#!/usr/bin/env bash
# CI step: prove the lower bounds in pyproject.toml. Builds a fresh virtual environment in
# .venv-min with every direct dependency at the version pinned in ci/min-versions.txt, checks
# that it really got those versions and that pyproject.toml states the same bounds, then runs
# the core (Qt-free) tests plus a few checks for dependencies those tests do not reach.
#   usage: bash scripts/ci_min_deps.sh        (needs python3 >= 3.11 with venv; no Qt, no GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

PY=${PYTHON:-python3}
rm -rf .venv-min  # always from scratch: nothing newer may survive from an earlier run
"$PY" -m venv .venv-min
VPY=.venv-min/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip quietly, without the warnings about absent local index folders; --no-compile because
# byte-compiling all of torch costs more than the tests import.
pip_q() {
  "$VPY" -m pip install -q --no-compile "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
stage() { echo "--- [$(( $(date +%s) - start )) s] $*"; }

# torch/torchvision first: they come from local files on the CI machine. Then the project
# (a built wheel, not editable, so its declared requirements are what pip resolves) with every
# direct dependency constrained to its minimum; the training extra brings scikit-learn,
# matplotlib and torchmetrics, and pytest is the test runner's own minimum.
stage "installing torch, torchvision"
pip_q torch==2.14.1 torchvision==0.29.1
stage "installing napari-ddrnet[training] and pytest at the minimum versions"
pip_q -c ci/min-versions.txt ".[training]" pytest

stage "installed (direct dependencies at their minimum):"
"$VPY" -m pip freeze | grep -i -E '^(numpy|scipy|pandas|scikit-image|scikit-learn|pillow|tifffile|imagecodecs|dask|distributed|zarr|numcodecs|torch|torchvision|torchmetrics|safetensors|tqdm|magicgui|qtpy|npe2|matplotlib|pytest)=='

# Every pin installed exactly, and every pinned package's ">=" bound in pyproject.toml equal to it.
"$VPY" - <<'EOF'
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pins = {}
for line in open("ci/min-versions.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, _, v = line.partition("==")
        pins[canonicalize_name(name)] = Version(v)
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = [Requirement(r) for r in project["dependencies"]]
reqs += [Requirement(r) for rs in project["optional-dependencies"].values() for r in rs]
bad = []
for name, v in pins.items():
    got = Version(version(name))
    if got.release != v.release:  # ignore local labels such as +cpu
        bad.append(f"{name}: installed {got}, min-versions.txt pins {v}")
core = {canonicalize_name(r.name) for r in reqs[:len(project["dependencies"])]}
for r in reqs:
    n = canonicalize_name(r.name)
    lows = [Version(s.version) for s in r.specifier if s.operator == ">="]
    if n in pins and lows != [pins[n]]:
        bad.append(f"{n}: pyproject.toml says {r.specifier or 'no bound'}, "
                   f"min-versions.txt pins {pins[n]}")
    elif n in core and n not in pins:
        bad.append(f"{n}: core dependency missing from ci/min-versions.txt")
if bad:
    sys.exit("minimum-version check failed:\n  " + "\n  ".join(bad))
print(f"--- {len(pins)} pins installed exactly and stated as lower bounds in pyproject.toml")
EOF

stage "checks beyond the core tests"
# Dependencies the core tests do not exercise: compressed TIFFs (imagecodecs), the calibration
# error the project takes from torchmetrics, and the training metrics/plots (scikit-learn,
# matplotlib). magicgui and qtpy are only installed here: they need Qt, i.e. the full test run.
"$VPY" - <<'EOF'
import tempfile
from pathlib import Path

import numpy as np

with tempfile.TemporaryDirectory() as d:
    import tifffile

    from napari_ddrnet.image_io import read_image

    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    for comp in ("jpeg", "lzw", "zstd", "deflate"):
        path = Path(d) / f"{comp}.tif"
        tifffile.imwrite(path, image, photometric="rgb", tile=(128, 128), compression=comp)
        (level,), _ = read_image(path)
        level = np.asarray(level)
        assert level.shape == image.shape, (comp, level.shape)
        if comp == "jpeg":
            assert np.abs(level.astype(int) - image).mean() < 60, comp
        else:
            np.testing.assert_array_equal(level, image)
print("imagecodecs: jpeg/lzw/zstd/deflate tiled TIFFs read back through read_image")

import torch
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification import multiclass_calibration_error

rng = np.random.default_rng(1)
logits = rng.normal(size=(500, 5)) * 2
probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
target = rng.integers(0, 5, 500)
conf, pred = probs.max(1), probs.argmax(1)
edges = np.linspace(0, 1, 16)
ece = sum(m.mean() * abs((pred[m] == target[m]).mean() - conf[m].mean())
          for m in ((conf > lo) & (conf <= hi) for lo, hi in zip(edges[:-1], edges[1:]))
          if m.any())
p, t = torch.tensor(probs, dtype=torch.float32), torch.tensor(target)
f = float(multiclass_calibration_error(p, t, num_classes=5, n_bins=15, norm="l1"))
metric = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")
metric.update(p[:250], t[:250])
metric.update(p[250:], t[250:])
c = float(metric.compute())
assert abs(f - ece) < 1e-4 and abs(c - ece) < 1e-4, (f, c, ece)
print(f"torchmetrics: calibration error {f:.4f} (functional and class) == numpy {ece:.4f}")

from training.evaluate import metrics, save_confusion

rng = np.random.default_rng(2)
classes = ["a", "b", "c", "d"]
res = metrics(rng.dirichlet(np.ones(4), 200), rng.integers(0, 4, 200), classes)
assert res["n"] == 200 and np.asarray(res["confusion"]).sum() == 200
with tempfile.TemporaryDirectory() as d:
    save_confusion(res["confusion"], classes, Path(d) / "cm", "smoke")
    assert (Path(d) / "cm.png").stat().st_size > 1000
print("scikit-learn/matplotlib: training metrics and confusion-matrix plot")
EOF

stage "core tests at the minimum versions"
"$VPY" -m pytest tests/test_segmentation.py tests/test_pipeline.py tests/test_cli_io.py \
  tests/test_model.py tests/test_cohort.py -q -p no:cacheprovider
stage "ci_min_deps: passed"
