"""cdf package."""
