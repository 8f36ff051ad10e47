"""agentbus benchmarks, each side by side with a raw nats-py floor (`make bench`).

`python -m bench` runs them all; `python -m bench pipeline|rpc|scaling|archiver|memory`
runs one. Each prints one JSON object and writes it to `bench/results/{name}.json`.
"""

__all__: list[str] = []
