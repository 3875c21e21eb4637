"""PyTorch checkpoints -> Flax variables, without torch.

  torch_pickle  reading `.pth` / `.pth.tar` (zip and legacy torch formats, a restricted unpickler) and `.npz`
  architecture  the model a weakalign/CNNGeo/torchvision checkpoint describes, inferred from its names and shapes
  convert       strict conversion into our models' variables (`load_torch_checkpoint`, WeightsMismatchError)
  decoder       the reference's co-segmentation Decoder weights -> `CosegDecoder` variables
  dinov2        official DINOv2 checkpoints -> (`DinoV2`, variables)
The names below are the package's public surface.
"""
from macosnet_jax.weights.architecture import infer_resnet_config, matching_model_from_state_dict
from macosnet_jax.weights.convert import WeightsMismatchError, convert_torch_checkpoint, load_torch_checkpoint
from macosnet_jax.weights.decoder import decoder_variables_from_torch
from macosnet_jax.weights.dinov2 import load_dinov2
from macosnet_jax.weights.torch_pickle import load_torch_file, load_torch_state_dict

__all__ = ["WeightsMismatchError", "convert_torch_checkpoint", "decoder_variables_from_torch",
           "infer_resnet_config", "load_dinov2", "load_torch_checkpoint", "load_torch_file", "load_torch_state_dict",
           "matching_model_from_state_dict"]
