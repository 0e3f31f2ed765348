"""ComfyUI glue for dng_core: node schemas and the model-patch hooks. No guidance math lives here."""
