"""Tiny random transformers models written to local directories, as a user's checkpoints would be."""
from __future__ import annotations

import torch
import transformers

from conftest import randomize_torch


def siglip(path, use_head=True, layers=3, seed=0):
  cfg = transformers.SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                                        num_attention_heads=4, image_size=56, patch_size=14,
                                        vision_use_head=use_head)
  model = randomize_torch(transformers.SiglipVisionModel(cfg), seed)
  model.save_pretrained(path)
  return model


def siglip_pair(path, seed=0, vocab=120):
  """A SiglipModel (text and vision towers, as google/siglip-so400m-patch14-384 is released)."""
  text = transformers.SiglipTextConfig(vocab_size=vocab, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=16, projection_size=40,
                                       bos_token_id=None, eos_token_id=1, pad_token_id=1)
  vision = transformers.SiglipVisionConfig(hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=56, patch_size=14)
  model = randomize_torch(transformers.SiglipModel(
      transformers.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())), seed)
  model.save_pretrained(path)
  return model


def qwen2_config(tie=False, kv_heads=2, theta=1e6, layers=2):
  return transformers.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=112,
                                  num_hidden_layers=layers, num_attention_heads=8,
                                  num_key_value_heads=kv_heads, rope_theta=theta,
                                  rope_parameters={"rope_type": "default", "rope_theta": theta},
                                  tie_word_embeddings=tie, max_position_embeddings=512)


def qwen2(path, tie=False, kv_heads=2, theta=1e6, seed=0, dtype=torch.float32):
  model = randomize_torch(transformers.Qwen2ForCausalLM(qwen2_config(tie, kv_heads, theta)), seed)
  model.to(dtype).save_pretrained(path)
  return model.float()


def llava_onevision(path, seed=0, pinpoints=None):
  """`pinpoints`: anyres grid resolutions in the tiny tower's 56px crops (default: transformers')."""
  vision = transformers.SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=56, patch_size=14)
  cfg = transformers.LlavaOnevisionConfig(vision_config=vision.to_dict(),
                                          text_config=qwen2_config().to_dict(),
                                          vision_feature_layer=-1, vision_feature_select_strategy="full",
                                          image_token_index=95, video_token_index=94,
                                          **({"image_grid_pinpoints": pinpoints} if pinpoints else {}))
  model = randomize_torch(transformers.LlavaOnevisionForConditionalGeneration(cfg), seed)
  model.save_pretrained(path)
  return model
