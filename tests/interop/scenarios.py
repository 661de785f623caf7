"""What every interop script shares: run a named scenario, report it, go
on after a failure, and close with the "N passed, N failed" line that
tests/common's run_python_interop looks for."""

results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}")
    except Exception as e:  # report and go on
        results.append((name, e))
        print(f"FAIL {name}: {e!r}")


def summary():
    """Prints the closing line; returns the exit status."""
    failed = sum(1 for _, e in results if e is not None)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
