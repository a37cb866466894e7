"""Field names of the local dumps' own annotation formats (SA-1B, JourneyDB) and of caption files."""

# SA-1B: sa_N.json holds {"image": {"image_id", "width", "height", "file_name"}, "annotations": [...]}
SAM_IMAGE = "image"
SAM_WIDTH = "width"
SAM_HEIGHT = "height"

# JourneyDB annotation jsonl: {"img_path": "./000/<id>.jpg", "prompt": ..., "Task2": {"Caption": ...}}
JDB_PATH = "img_path"
JDB_PROMPT = "prompt"
JDB_TASK2 = "Task2"
JDB_CAPTION = "Caption"

# Caption files joined by file name (SAM-LLaVA-Captions10M and similar): the first column found is used.
CAPTION_KEY_CANDIDATES = ("file_name", "filename", "image", "key", "img")
CAPTION_TEXT_CANDIDATES = ("caption", "txt", "text", "long_caption")
CAPTION_KEY = "key"
CAPTION_TEXT = "caption"
