"""Evaluation on the paper's benchmarks (SPEC §8), one module per concern.

Bottom to top (a module imports only the ones above it in this list, and the layers below evaluation):
  benchmarks       the benchmark table: dataset names, default splits, TSS subsets, the paper's figures
  tables           ResultTable (text and JSON), write_tables, file_stem (names used as file names)
  mapping          the jitted geometry calls (B's points into A, mask resampling), padded to few shapes
  keypoints        PCK on one pair and its conventions (img224, kp_extent, bbox); point transfer
  masks            co-segmentation on one image: binarising, upsampling, precision P and Jaccard J
  flow             TSS dense flow on B's grid, flow PCK, Middlebury .flo files
  inputs           reading benchmark example dicts and predictions, with errors naming the example
  keypoint_driver  keypoint PCK tables over a pair dataset (PF-PASCAL, PF-WILLOW, SPair-71k)
  coseg_driver     co-segmentation tables over image collections (Internet): masks aggregated over partners
  tss_driver       TSS flow PCK and co-segmentation tables, both flip treatments
  tfds_data        loading the prepared tfds builders of macosnet_datasets; the not-prepared error
  dataset_driver   a whole dataset by name with its protocol (evaluate_dataset); the synthetic pairs
  validation       what `macosnet` uses: the validation score, validation_fn for early stopping, run_eval

`macosnet_jax.evaluate` re-exports the public names of the metric and driver modules. The package sits above
training (it may import ops, models, losses, data, training and predict); it is imported only by the entry points
(main, demo, predict_cli, scripts) and by its neighbours of the same layer (visualize, zeroshot). This file imports
nothing, so that importing one module of the package does not import them all.
"""
