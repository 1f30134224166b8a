"""Teachers: vision-language (CLIP-style) teachers and vision teachers for KD."""
