"""ollama-governor's machinery, laid out in the order a request meets it.

``request`` (what the client sent) -> ``facts`` (what the governor knows) -> ``govern`` (the
policies and their decision) -> ``upstream`` (Ollama) -> ``ledger`` (what each change did) ->
``views`` (status, metrics, the page); ``config`` and ``app`` build it all. Policy authors need
only the ``policies`` package; this one imports it, never the reverse.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ollama-governor")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
