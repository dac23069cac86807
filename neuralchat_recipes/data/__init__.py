"""Data loading, row-format adapters and prompt templates."""
