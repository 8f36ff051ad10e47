"""The NATS plumbing: connecting, the `Bus` (JetStream publishes, KV compare-and-set,
events, dead letters), pull-consumer loops, topology, documents in the object store,
discovery. Imports only the contract and observability."""
