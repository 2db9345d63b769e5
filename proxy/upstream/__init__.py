"""Ollama: the one client session, byte-for-byte relaying, and the tap that reads the final object."""
