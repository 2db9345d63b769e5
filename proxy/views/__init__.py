"""What the governor shows: health, status, metrics and the dashboard page, behind admin auth."""
