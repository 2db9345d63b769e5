"""What each change did: change detection, the results store, before/after figures and the report."""
