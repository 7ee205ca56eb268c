"""Compliance: KYC cases, AML monitoring, sanctions screening and a hash-chained audit trail."""
