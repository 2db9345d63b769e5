"""``python -m proxy`` runs the ``ollama-governor`` command."""

from proxy.cli import main

raise SystemExit(main())
