"""ollama-governor's machinery: transport, facts, the policy chain runner, results, config, CLI.

Policy authors need only the ``policies`` package; this one imports it, never the reverse.
"""

__version__ = "0.1.0"
