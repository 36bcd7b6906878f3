"""Visual QA: a self-contained report of a run, quality figures, and a blinded reader study."""
