"""The package version, in a module of its own so that modules below the API can record it without importing
`difflens` (whose attributes are the API)."""

__version__ = "0.1.0"
