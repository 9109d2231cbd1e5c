"""jobserver's benchmark suite: `python -m bench` (see bench/__main__.py).

Every benchmark prints numbers and never fails a test run. Each targets only
127.0.0.1, is bounded in count and time, stops by itself and kills the servers
it started. Baselines and jobserver are measured side by side in the same run.
"""
