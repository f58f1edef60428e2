"""ocf package."""
