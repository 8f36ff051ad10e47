"""Dev-only tools: the embedded nats-server and the local stack of `agentbus up` with its
supervisor. No service imports them."""
