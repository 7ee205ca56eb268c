"""Sanctions lists: parsers for OFAC SDN CSVs and FollowTheMoney JSON lines, and the matcher."""
