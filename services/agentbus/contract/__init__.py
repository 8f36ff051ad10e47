"""The wire contract and the settings: subjects, headers, message models, permissions,
the AsyncAPI document, errors, settings, plugin names, chunking. No I/O; imports nothing
else of agentbus."""
