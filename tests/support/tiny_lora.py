"""Writes a tiny random LoRA adapter for the model of tiny_hf_model.py, in PEFT's on-disk format
(adapter_config.json + adapter_model.safetensors), without needing peft itself.

Run with the vLLM virtualenv's python (it has torch and safetensors):

    python tests/support/tiny_lora.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

LAYERS, HIDDEN, RANK = 2, 64, 8


def build(out_dir: str) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tensors = {}
    for layer in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, HIDDEN) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(HIDDEN, RANK) * 0.01
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": None,
        "modules_to_save": None,
        "inference_mode": True,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)


if __name__ == "__main__":
    build(sys.argv[1])
