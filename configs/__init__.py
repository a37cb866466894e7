"""The paper's training stages as lumos-train recipes (`--config NAME`); read by lumos.trainer.config."""
