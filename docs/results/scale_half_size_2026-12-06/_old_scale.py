"""Load the estimator before black fill was background: ``/tmp/head_scale.py`` =
``git show f22dfee:src/napari_ddrnet/scale.py``, named inside the package so that its relative
imports resolve (as ``benchmarks.pixel_size --old`` does)."""

import importlib.util
import sys

spec = importlib.util.spec_from_file_location("napari_ddrnet._old_scale", "/tmp/head_scale.py")
old = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = old
spec.loader.exec_module(old)
