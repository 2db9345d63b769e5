"""Signals for a load balancer in front of several governors: readiness, weight, the agent."""
