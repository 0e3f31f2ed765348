"""Core tests: dng_core without ComfyUI (pure torch)."""
