"""Builds a tiny random Llama model directory for vLLM (no hub access).

Run with the vLLM virtualenv's python (it has torch, transformers, tokenizers):

    python tests/support/tiny_hf_model.py OUT_DIR

2 layers, hidden 64, 2 heads (head_dim 32: vLLM's CPU attention needs >= 32),
vocab 1000 byte-level BPE trained on generated text; float32 safetensors.
"""

from __future__ import annotations

import os
import random
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def corpus(lines: int = 3000) -> list[str]:
    rng = random.Random(0)
    words = [
        "the",
        "model",
        "serves",
        "tokens",
        "from",
        "a",
        "cache",
        "while",
        "requests",
        "wait",
        "in",
        "a",
        "queue",
        "for",
        "a",
        "batch",
        "slot",
        "monitoring",
        "latency",
        "throughput",
        "prefix",
        "memory",
        "gpu",
        "engine",
        "metric",
        "exporter",
        "story",
        "sea",
        "ocean",
        "forest",
        "river",
        "mountain",
        "question",
        "answer",
        "system",
        "assistant",
        "helpful",
        "project",
        "document",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def build(out_dir: str) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast.save_pretrained(out_dir)


if __name__ == "__main__":
    build(sys.argv[1])
