"""The iterators' batches carry exactly the keys declared in data/batches.py."""
import ml_collections
import numpy as np

from macosnet_jax.data import batches, pipeline, synthetic, warps
from macosnet_jax.stages import strong


def _all_keys(kind):
    required, optional = batches.declared_keys(kind)
    return required | optional


SOURCE = synthetic.make_synthetic_objects(8, 32, 0, 2)  # images with masks, keypoints and categories


def test_pair_and_triplet_batches_have_the_declared_keys():
    for triplets, kind in ((False, batches.PairBatch), (True, batches.TripletBatch)):
        batch = next(pipeline.make_pair_iterator(SOURCE, batch_size=2, image_size=32, seed=0, triplets=triplets))
        assert set(batch) == _all_keys(kind), kind.__name__
        plain = {k: v for k, v in SOURCE.items() if k == "image" or k == "category"}
        bare = next(pipeline.make_pair_iterator(plain, batch_size=2, image_size=32, seed=0, triplets=triplets))
        assert set(bare) == batches.declared_keys(kind)[0], kind.__name__  # no masks or keypoints: required only
        assert batch["image_a"].dtype == np.uint8 and batch["mask_a"].shape == (2, 32, 32)


def test_warp_and_strong_batches_have_the_declared_keys():
    batch = next(warps.make_warp_iterator(SOURCE, batch_size=2, image_size=32, seed=0, kind="tps"))
    assert set(batch) == _all_keys(batches.WarpPairBatch)
    bare = next(warps.make_warp_iterator(SOURCE["image"], batch_size=2, image_size=32, seed=0))
    assert set(bare) == batches.declared_keys(batches.WarpPairBatch)[0] | {"index"}
    config = ml_collections.ConfigDict(dict(batch_size=2, image_size=32, seed=0))
    step = next(strong._zip_warp_iterators(SOURCE, config, 0, 0, 1))
    assert set(step) == _all_keys(batches.StrongBatch)
    assert step["affine_theta"].shape == (2, 6) and step["tps_theta"].shape == (2, 18)
