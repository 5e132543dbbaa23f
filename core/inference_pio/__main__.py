"""``python -m inference_pio`` runs the command line."""

from inference_pio.cli import main

raise SystemExit(main())
