"""Fakes at the network edge only: servers on 127.0.0.1 that speak other vendors' wire protocols."""
