"""Pixel normalisation constants shared by the curation scorers and the encoders."""

# OpenAI CLIP's image mean and std (RGB, 0..1 pixels): the aesthetic predictor's CLIP and the CLIP encoder.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
