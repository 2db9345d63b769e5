"""What the client sent: the governed body parsed as Ollama reads it, rewritten, and the HTTP handler."""
