"""Write an offline Hugging Face cache entry for openai/clip-vit-large-patch14 (tokenizer + config, no weights).

Run by a host venv's Python (open_clip_torch installed), with HF_HOME set to the cache and HF_HUB_OFFLINE=1:
`python clip_tokenizer_cache.py HF_HOME`. SD1.5 hosts load
this tokenizer and config by name from the hub; the hub cannot be reached here. The tokenizer files are derived from
the BPE merges file open_clip ships, the same data as OpenAI's release (so token ids match open_clip.tokenize
exactly: checked at the end); the config is the published model's architecture. Weights come from the checkpoint.
"""

import gzip
import json
import sys
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe, tokenize

REPO = "openai/clip-vit-large-patch14"
REVISION = "0" * 40  # a stand-in snapshot name: the cache only needs refs/main to name it
TEXT = {"model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "projection_dim": 768, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
VISION = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
          "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>"}


def bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merge list, built the way CLIP's SimpleTokenizer builds them."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main(hf_home: Path) -> None:
    repo = hf_home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    vocab, merges = bpe_vocab_and_merges()
    (snapshot / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (snapshot / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (snapshot / "special_tokens_map.json").write_text(json.dumps(SPECIAL))
    (snapshot / "tokenizer_config.json").write_text(json.dumps(
        {**SPECIAL, "add_prefix_space": False, "errors": "replace", "do_lower_case": True, "model_max_length": 77,
         "name_or_path": REPO, "tokenizer_class": "CLIPTokenizer"}))
    (snapshot / "config.json").write_text(json.dumps(
        {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768, "logit_scale_init_value": 2.6592,
         "text_config": TEXT, "vision_config": VISION}))

    from transformers import CLIPTokenizer
    text = "a photo of a cat, highly detailed"
    ids = CLIPTokenizer.from_pretrained(REPO)(text, padding="max_length", max_length=77)["input_ids"]
    expected = tokenize([text])[0].tolist()
    # open_clip pads with 0, HF with <|endoftext|>: compare up to and including the end token
    end = expected.index(vocab["<|endoftext|>"]) + 1
    assert ids[:end] == expected[:end], (ids[:end], expected[:end])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
