"""macosnet_jax: MaCoSNet (Show, Match and Segment, TPAMI 2020) in JAX/Flax.

One two-stream network learns, from image collections labelled only by category, to match (an affine then
thin-plate-spline warp between two images) and to co-segment (each image's object mask). See SPEC in docs/ and the
README for the conventions and the entry points.
"""

__version__ = "0.1.0"
