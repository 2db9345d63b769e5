"""What the governor knows, gathered off the request path: memory, model facts, loaded models, tokens."""
