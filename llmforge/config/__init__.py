"""The config tree (pydantic) and its loader. Light: pydantic and yaml only."""

from llmforge.config.loader import LoadedConfig, dump_config, leaf_paths, load_config
from llmforge.config.root import LlmforgeConfig

__all__ = ["LlmforgeConfig", "LoadedConfig", "dump_config", "leaf_paths", "load_config"]
