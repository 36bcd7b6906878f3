"""The engine over HTTP: `medgen serve` (see engine/SERVER.md)."""
