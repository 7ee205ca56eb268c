"""Operator tools: the local launcher, audit and verify."""
