"""neuralchat-recipes: declarative YAML recipes that fine-tune chat LLMs."""

__version__ = "0.1.0"

# Bumped when the engine changes what a stage produces for the same config; part of every
# stage fingerprint, so artifacts made by an older engine are not reused by mistake.
ENGINE_FINGERPRINT_VERSION = "2"
