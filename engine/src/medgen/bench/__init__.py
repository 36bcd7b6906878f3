"""Benchmarks of the engine (`medgen bench ...`). Importing this package loads no torch."""

__all__ = ["format_table", "run_speed_bench"]


def __getattr__(name):
    if name in __all__:
        from medgen.bench import speed

        return getattr(speed, name)
    raise AttributeError(f"module 'medgen.bench' has no attribute {name!r}")
