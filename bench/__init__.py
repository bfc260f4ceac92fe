"""VAP benchmarks: ``python -m bench SUITE [--quick] [--json PATH]``.

Every suite prints a table and can write ``{"suite", "machine", "results": [...]}`` as JSON. Targets are
checked here, never by timed assertions in tests.
"""
