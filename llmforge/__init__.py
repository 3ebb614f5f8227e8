"""llmforge: prepare data, fine-tune, evaluate, export to GGUF, deploy to Ollama and serve, from one YAML file."""

__version__ = "0.1.0"
