"""Channel maximum of the not-specimen mask: numpy's reduction over the last axis against
``specimen.channel_max``, in the same run, on the pipeline benchmark's field (uint8, and the
border-cropped view the segmentation statistics pass). Run from the project root:
``PYTHONPATH=. python docs/results/channel_max_2026-12-07/time.py``."""

import timeit

import numpy as np
import torch

from benchmarks.pipeline_speed import default_field
from napari_ddrnet.image_io import read_image
from napari_ddrnet.specimen import channel_max

torch.set_num_threads(2)
path = default_field()
rgb = read_image(path)[0][0]
for name, a in (("whole field", rgb), ("border-cropped view", rgb[2:-2, 2:-2])):
    assert np.array_equal(channel_max(a), a.max(axis=-1))
    old = min(timeit.repeat(lambda a=a: a.max(axis=-1), number=20, repeat=5)) / 20
    new = min(timeit.repeat(lambda a=a: channel_max(a), number=20, repeat=5)) / 20
    print(f"{path.name} {name} {a.shape}: rgb.max(axis=-1) {old * 1e3:.2f} ms, "
          f"channel_max {new * 1e3:.2f} ms, x{old / new:.1f}; identical")
