"""The decision: rules, the policy chain behind its error boundary, the pipeline and its record."""
